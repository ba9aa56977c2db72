"""`python -m baseroll.cli`: the same command group as the `baseroll` console script."""
from baseroll.cli import main

if __name__ == "__main__":
    main(prog_name="baseroll")
