/*
 * A stand-in AppImage type-2 runtime for the pipeline tests: a valid ELF file that the
 * tests stamp with AI\x02 at offset 8. It knows only --appimage-offset (where the
 * squashfs starts: the end of its section header table, which `strip` leaves last);
 * the tests mount the image with `squashfuse -o offset=N` and run AppRun themselves.
 */
#include <elf.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    Elf64_Ehdr header;
    FILE *self = fopen("/proc/self/exe", "rb");
    if (!self || fread(&header, sizeof header, 1, self) != 1) return 127;
    if (argc > 1 && !strcmp(argv[1], "--appimage-offset")) {
        printf("%lu\n", (unsigned long)(header.e_shoff + header.e_shentsize * header.e_shnum));
        return 0;
    }
    fprintf(stderr, "%s: stub runtime, mount the image with squashfuse instead\n", argv[0]);
    return 127;
}
