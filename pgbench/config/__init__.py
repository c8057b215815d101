"""The configuration layer: every knob declared once (`sections`), what a verb's class is made
of (`compose`), each verb's class and its resolution (`verbs`), URLs (`urls`)."""
