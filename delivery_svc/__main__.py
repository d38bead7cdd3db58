"""`python -m delivery_svc`: serve the delivery service."""

from bizmsg.kit.server import main
from delivery_svc.app import DEFINITION

main(DEFINITION)
