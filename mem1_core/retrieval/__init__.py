"""Search backends: the protocol, in-process BM25, dense (faiss + a sentence encoder) and hybrid
search, the choice among them per data set, the HTTP server and its client.

Below envs/ and above data/: environments and the shop catalogue search through it; it needs
`data.types.Document`, and backends.py reads a composed data dir (data.compose). faiss, torch and
transformers are imported only when an index is built or loaded.
"""
