from invssl.cli import entry

entry()
