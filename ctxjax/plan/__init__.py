"""`ctxjax plan`: compile a config's train steps for a named TPU slice on any host (libtpu compiles for a
topology without a TPU) and read the TPU compiler's own memory and cost analyses, to learn before paying for
a pod whether the config fits and how long a context it can train there."""
