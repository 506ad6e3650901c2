"""fakeai.server: see the modules' opening comments."""
