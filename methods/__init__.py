"""One file per method; each registers its ``Adapter`` subclass with ``@METHODS.register_module()``."""
