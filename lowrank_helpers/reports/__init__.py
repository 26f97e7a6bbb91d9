"""Tables, prose, figures and widgets from the records; README's blocks."""
