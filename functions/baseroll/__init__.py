"""baseroll: roll Cloud Run fleets onto new base image digests by registry-side rebase."""
