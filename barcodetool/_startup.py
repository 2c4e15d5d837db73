"""The first thing the `barcodetool` program does (imported first by barcodetool/__init__.py, standard library
only): until barcodetool.cli installs its own handler, SIGINT/SIGTERM end the program with one line and 130/143
instead of a KeyboardInterrupt traceback or a silent death. A Python program that imports barcodetool is left
alone (the same test as barcodetool.io.interrupts.launched_as_program)."""

import os
import signal
import sys


def _launched_as_program() -> bool:
    program = sys.argv[0] if sys.argv else ""
    name = os.path.basename(program)
    if program == "-m":  # `python -m barcodetool` while the package is imported: sys.orig_argv names the module
        argv = getattr(sys, "orig_argv", [])
        return any(a == "-m" and b == "barcodetool" for a, b in zip(argv, argv[1:]))
    return name.removesuffix(".exe").removesuffix("-script.py") == "barcodetool"


def _exit_on_signal(signal_number, frame):
    name = "(SIGINT)" if signal_number == signal.SIGINT else f"by signal {signal_number}"
    try:
        os.write(2, f"barcodetool: interrupted {name}; no partial output was left\n".encode())
    finally:
        os._exit(128 + signal_number)


_exit_on_signal.barcodetool_early = True  # barcodetool.cli and the commands' SignalGuard replace it

if _launched_as_program() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _exit_on_signal)
if _launched_as_program() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _exit_on_signal)
