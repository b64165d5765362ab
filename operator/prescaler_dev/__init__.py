"""Development kit for prescaler: the local control plane, the local PostgreSQL and the `make demo` driver.

Kept apart from the `prescaler` package the way kopf keeps its kits apart from its internals: this package
may import `prescaler`, never the other way round, and it is not part of the runtime wheel or the image
(a test fails when runtime code imports it).
"""
