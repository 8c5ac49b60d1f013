"""The PyTorch side: ``TokenDataset`` and everything behind it (docs/design.md has the module map). May import
streaming, text, sources and the core; never serve or cli."""
