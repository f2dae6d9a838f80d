"""``python -m moehooks.cli``: the moehooks command."""

from moehooks.cli import main

if __name__ == "__main__":
    main()
