"""The configuration layer: sections, composition, the verbs' dataclasses and their resolution."""
