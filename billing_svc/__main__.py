"""`python -m billing_svc`: serve the billing service."""

from billing_svc.app import DEFINITION
from bizmsg.kit.server import main

main(DEFINITION)
