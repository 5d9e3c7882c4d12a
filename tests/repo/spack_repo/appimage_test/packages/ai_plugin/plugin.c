const char *leaf(void);
const char *plugin_name(void) { return leaf()[0] == 'l' ? "plugin-ok" : "plugin-broken"; }
