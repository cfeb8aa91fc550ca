"""The router: serving /predict and /events beside the ad server."""

from router.kernel_cache import configure

configure()
