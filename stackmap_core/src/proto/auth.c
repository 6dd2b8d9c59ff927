/*
 * auth.c -- loading memcached's auth file and checking credentials against
 * it (auth.h says why).
 *
 * The file format is memcached's: one "user:password" per line, the user
 * up to the first ':', the password up to the end of the line (a "\r"
 * before the "\n" is not part of it).  Unlike memcached, which reads at
 * most 8 lines and silently splits lines longer than 255 bytes, every line
 * is read, and a line without ':', an empty line or a line over 255 bytes
 * is refused with its line number.
 */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* memcached's MAX_ENTRY_LEN: longest line, with its newline. */
#define AUTH_LINE_MAX 256

/* One "user:password" line. */
typedef struct auth_entry {
    const char *user; /* into sm_auth.data */
    size_t nuser;     /* bytes of user */
    const char *pass; /* into sm_auth.data */
    size_t npass;     /* bytes of pass */
} auth_entry;

struct sm_auth {
    char *data;          /* the file's bytes (entries point into it) */
    size_t n;            /* entries */
    auth_entry entry[];  /* the lines, in file order */
};

sm_auth *sm_auth_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "auth file %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *data = malloc(cap + 1);
    size_t got;
    while (data && (got = fread(data + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            char *bigger = cap < ((size_t)1 << 24) ? realloc(data, cap * 2 + 1) : NULL;
            if (!bigger) {
                free(data);
                data = NULL;
                break;
            }
            data = bigger;
            cap *= 2;
        }
    }
    int rerr = ferror(f) ? errno : 0;
    fclose(f);
    if (!data || rerr) {
        free(data);
        snprintf(err, errlen, "auth file %s: %s", path, rerr ? strerror(rerr) : "too large (16 MiB at most)");
        return NULL;
    }
    data[len] = '\0';
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += data[i] == '\n';
    lines += len > 0 && data[len - 1] != '\n';
    sm_auth *a = calloc(1, sizeof(*a) + lines * sizeof(auth_entry));
    if (!a) {
        free(data);
        snprintf(err, errlen, "auth file %s: out of memory", path);
        return NULL;
    }
    a->data = data;
    char *p = data, *end = data + len;
    size_t lineno = 0;
    while (p < end) {
        lineno++;
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        size_t linelen = (size_t)(eol - p) + (nl != NULL);
        char *stop = eol;
        if (stop > p && stop[-1] == '\r')
            stop--;
        char *colon = memchr(p, ':', (size_t)(stop - p));
        const char *why = NULL;
        if (linelen >= AUTH_LINE_MAX)
            why = "longer than 255 bytes";
        else if (memchr(p, '\0', (size_t)(stop - p)))
            why = "contains a NUL byte";
        else if (!colon)
            why = "is not user:password";
        if (why) {
            snprintf(err, errlen, "auth file %s: line %zu %s", path, lineno, why);
            sm_auth_free(a);
            return NULL;
        }
        a->entry[a->n++] = (auth_entry){p, (size_t)(colon - p), colon + 1, (size_t)(stop - colon - 1)};
        p = eol + (nl != NULL);
    }
    if (a->n == 0) {
        snprintf(err, errlen, "auth file %s: no user:password line", path);
        sm_auth_free(a);
        return NULL;
    }
    return a;
}

void sm_auth_free(sm_auth *a)
{
    if (!a)
        return;
    free(a->data);
    free(a);
}

/* Equal n bytes, in time that depends only on n. */
static unsigned ct_diff(const char *x, const char *y, size_t n)
{
    volatile unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(x[i] ^ y[i]);
    return d;
}

bool sm_auth_check(const sm_auth *a, const char *user, size_t nuser, const char *pass, size_t npass)
{
    if (!a)
        return false;
    /* Every entry is looked at, so the time does not tell which one matched. */
    unsigned found = 0;
    for (size_t i = 0; i < a->n; i++) {
        const auth_entry *e = &a->entry[i];
        if (e->nuser != nuser || e->npass != npass)
            continue;
        unsigned d = ct_diff(user, e->user, nuser) | ct_diff(pass, e->pass, npass);
        found |= d == 0;
    }
    return found != 0;
}

bool sm_auth_check_plain(const sm_auth *a, const char *msg, size_t len)
{
    const char *z1 = memchr(msg, '\0', len);
    if (!z1)
        return false;
    const char *cid = z1 + 1;
    const char *z2 = memchr(cid, '\0', len - (size_t)(cid - msg));
    if (!z2)
        return false;
    size_t nzid = (size_t)(z1 - msg), ncid = (size_t)(z2 - cid);
    const char *pw = z2 + 1;
    size_t npw = len - (size_t)(pw - msg);
    if (nzid != 0 && (nzid != ncid || memcmp(msg, cid, ncid) != 0))
        return false;
    return sm_auth_check(a, cid, ncid, pw, npw);
}
