"""SQL, one module per aggregate. Every function takes the caller's connection, so the
caller decides the transaction; none commits on its own."""
