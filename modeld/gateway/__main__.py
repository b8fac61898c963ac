"""`python -m modeld.gateway`: the same as `modeld-gateway`."""

from modeld.gateway.main import main

main()
