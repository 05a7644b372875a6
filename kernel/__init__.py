"""The domain kernel: ids, money, time, limits, error codes, the API's resource shapes and
configuration types. Pure (no I/O: no sockets, files, processes or databases) and importing
no other package of the project, so every layer can import it and it can import none
(tests/test_layers.py enforces both)."""
