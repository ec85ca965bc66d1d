"""What crosses a trust boundary: hashes, keys, signed manifests, releases, TLS, atomic files.

Torch-free: devices import it.
"""
