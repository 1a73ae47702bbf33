"""Search backends: the protocol, in-process BM25, the HTTP server and its client.

Below envs/ and above data/: environments and the shop catalogue search through it, and it needs
only `data.types.Document`.
"""
