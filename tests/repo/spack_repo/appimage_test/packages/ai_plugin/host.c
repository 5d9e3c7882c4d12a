/* Loads lib/plugins/libplug.so relative to its own executable, as MPI components and
   other plugins are loaded: invisible to DT_NEEDED. */
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    char exe[PATH_MAX] = {0}, path[PATH_MAX + 64];
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) <= 0) return 2;
    snprintf(path, sizeof path, "%s/../lib/plugins/libplug.so", dirname(exe));
    void *h = dlopen(path, RTLD_NOW);
    if (!h) { printf("no plugin: %s\n", dlerror()); return 1; }
    const char *(*name)(void) = (const char *(*)(void))dlsym(h, "plugin_name");
    printf("plugin host: %s\n", name());
    return 0;
}
