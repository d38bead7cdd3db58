"""`python -m consent_svc`: serve the consent service."""

from bizmsg.kit.server import main
from consent_svc.app import DEFINITION

main(DEFINITION)
