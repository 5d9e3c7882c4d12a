const char *leaf(void) { return "leaf-1.0"; }
