# The Python cell driver of airlock-agent (crates/airlock-agent/src/repl).
# Started as `python3 -c BOOTSTRAP DRIVER`; runs every cell in the globals
# of `__main__` (as `python3 -c` runs its code), and talks to the agent
# only on fds 3 (commands) and 4 (reports), never on stdout or stderr.
import os, sys, signal, threading

# Common modules, imported once so that a cell importing them is fast.
import json, re, math, random, collections, itertools, functools, datetime
import pathlib, subprocess, io, time, string, textwrap, csv, statistics, traceback

COMMANDS, REPORTS = 3, 4
os.set_inheritable(COMMANDS, False)
os.set_inheritable(REPORTS, False)
commands = os.fdopen(COMMANDS, "rb", buffering=0)
main = sys.modules["__main__"].__dict__
INT = {signal.SIGINT}


def report(line):
    os.write(REPORTS, (line + "\n").encode())


def read_line():
    line = b""
    while not line.endswith(b"\n"):
        chunk = commands.read(1)
        if not chunk:
            sys.exit(0)  # the agent closed the channel
        line += chunk
    return line[:-1].decode()


def flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass


def exit_status(code):
    # As the interpreter does for an uncaught SystemExit.
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def run(path):
    with open(path, "rb") as f:
        source = f.read()
    before = set(threading.enumerate())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INT)
    try:
        try:
            exec(compile(source, "<string>", "exec", dont_inherit=True), main)
            # As at interpreter exit: wait for the threads the cell started.
            for thread in threading.enumerate():
                if thread not in before and not thread.daemon:
                    thread.join()
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, INT)
        return 0
    except SystemExit as e:
        return exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__
        # Drop the driver's own frames: the traceback starts in the cell.
        while tb is not None and tb.tb_frame.f_code.co_filename != "<string>":
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        return 130 if isinstance(e, KeyboardInterrupt) else 1


def with_env(pairs, body):
    saved = {name: os.environ.get(name) for name, _ in pairs}
    os.environ.update(pairs)
    try:
        return body()
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def serve():
    signal.pthread_sigmask(signal.SIG_BLOCK, INT)
    report("ready")
    while True:
        words = read_line().split(" ")
        if words[0] == "cell" and len(words) == 4:
            cell_id, path, count = words[1], words[2], int(words[3])
            pairs = [read_line().split("=", 1) for _ in range(count)]
            try:
                status = with_env(pairs, lambda: run(path))
            except KeyboardInterrupt:
                status = 130
            flush()
            # A SIGINT that came after the cell ended must not hit the next.
            while signal.SIGINT in signal.sigpending():
                signal.sigwait(INT)
            report(f"done {cell_id} {status}")
        elif words[0] == "reseed" and len(words) == 2:
            # After a restore from a memory template: the kernel was just
            # reseeded; `random` draws its new seed from it (os.urandom).
            random.seed()
            report("reseeded")
        else:
            report("error unknown command")


serve()
