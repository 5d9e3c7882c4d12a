const char *side(void) { return "side-2.0"; }
