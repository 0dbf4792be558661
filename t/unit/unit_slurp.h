
/*
 * The unit tests' one file reader: DIR/NAME whole, NUL-terminated; exits 2
 * when it cannot (the .t made the file, so that is the harness' fault).
 */

#ifndef _UNIT_SLURP_H_INCLUDED_
#define _UNIT_SLURP_H_INCLUDED_

#include <stdio.h>
#include <stdlib.h>


static unsigned char *
unit_slurp(const char *dir, const char *name, size_t *len)
{
    long            n;
    FILE           *f;
    char            path[4096];
    unsigned char  *buf;

    snprintf(path, sizeof(path), "%s/%s", dir, name);

    f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }

    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);

    buf = malloc(n + 1);
    if (buf == NULL || fread(buf, 1, n, f) != (size_t) n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }

    fclose(f);
    buf[n] = '\0';
    *len = n;

    return buf;
}

#endif /* _UNIT_SLURP_H_INCLUDED_ */
