const char *priv(void) { return "priv-via-origin"; }
