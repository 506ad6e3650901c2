"""fakeai.engine: see the modules' opening comments."""
