"""File formats exchanged between stages. One module owns each format: it writes it
(atomically), reads it, and validates it on read with errors that name the file and field."""
