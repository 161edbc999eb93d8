"""OPC UA driver (polling): batched reads of every tag of a source in one Read service call."""
