const char *plugin_name(void) { return "plugin-ok"; }
