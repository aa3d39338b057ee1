"""One servicer per proto service: parse the request, call the domain, build the response."""
