"""Execute every tutorial notebook top to bottom (CI runs this); fail on any error or overtime.

Usage: python tutorials/run_tutorials.py [NOTEBOOK ...] [--timeout SECONDS] [--write]
With --write the executed notebooks (outputs included) are saved back in place.
"""

import argparse
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per notebook")
    parser.add_argument("--write", action="store_true", help="save executed notebooks in place")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(HERE.glob("*.ipynb"))
    failures = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        try:
            NotebookClient(
                nb, timeout=int(args.timeout), kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
            ).execute()
        except Exception as exc:  # report every notebook, then fail
            failures.append(f"{path.name}: {type(exc).__name__}: {str(exc)[-2000:]}")
            print(f"FAIL {path.name}")
            continue
        elapsed = time.perf_counter() - started
        if elapsed > args.timeout:
            failures.append(f"{path.name}: took {elapsed:.0f} s, over the {args.timeout:.0f} s budget")
        print(f"ok   {path.name}  {elapsed:.1f} s")
        if args.write:
            nbformat.write(nb, path)
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
