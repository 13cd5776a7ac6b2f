"""The demo: the whole product on a generated book, against the bundled sandboxes."""
