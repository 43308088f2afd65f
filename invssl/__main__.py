from invssl.cli import main

main()
