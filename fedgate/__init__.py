"""fedgate: the federation's shared protocol, SDK and verification."""

from fedgate._native import obey_switch

obey_switch()  # before any other module: FEDGATE_NATIVE=0 imports the sources, not a build
