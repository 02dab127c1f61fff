"""One module per stage. A stage imports the core only; stages meet through the artifacts the store records."""
