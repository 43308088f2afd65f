"""Options shared by the benchmark scripts (run as ``python bench/NAME.py``)."""

import argparse

import torch

from invssl import fastconv


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fast-conv-devices",
        default=None,
        help="device types on which ssl_loss uses the native conv double backward "
        "(fastconv.FAST_CONV_DEVICES; default: as shipped), e.g. cpu,cuda",
    )


def apply_runtime_options(args: argparse.Namespace) -> None:
    """Thread count and the fast-conv devices, as the command line asked."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.fast_conv_devices is not None:
        fastconv.FAST_CONV_DEVICES.clear()
        fastconv.FAST_CONV_DEVICES.update(d for d in args.fast_conv_devices.split(",") if d)
