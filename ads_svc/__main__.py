"""`python -m ads_svc`: serve the ads service."""

from ads_svc.app import DEFINITION
from bizmsg.kit.server import main

if __name__ == "__main__":
    main(DEFINITION)
