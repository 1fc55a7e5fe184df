"""``splitgrow`` (and ``python -m splitgrow``): the command line, which needs the ``cli`` extra."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line, or say in one line how to install it."""
    try:
        from .cli import main as cli_main
    except ModuleNotFoundError as error:
        missing = error.name or "a module"
        sys.stderr.write(
            f"splitgrow: error: the command line needs {missing}, which is not installed "
            "(pip install 'splitgrow[cli]'; in a clone of the repository: pip install -e '.[cli]'): install the "
            "command line's extra\n"
        )
        sys.exit(2)
    cli_main()


if __name__ == "__main__":
    main()
