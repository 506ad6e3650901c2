"""fakeai.api: see the modules' opening comments."""
