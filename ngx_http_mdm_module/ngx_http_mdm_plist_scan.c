
/*
 * Copyright (C) The MDM module authors
 *
 * libplist 2.2 builds an XML plist into a tree and then frees, copies and
 * serialises it recursively: nesting must be bounded before it runs, and
 * the bound is only as good as the scanner's agreement with libplist's
 * tokenizer (src/xplist.c, node_from_xml() and get_text_parts()). So this
 * follows those rules, step by step:
 *
 *   - white space is space, tab, CR and LF;
 *   - a tag name ends at white space, '<' or '>'; a '/' just before the
 *     closing '>' makes the element empty (and is cut off the name);
 *     double-quoted attribute values may contain '<' and '>';
 *   - <?...?> (double quotes skipped), <!--...-->, and <!DOCTYPE ...>
 *     with an optional [...]> internal subset are skipped;
 *   - leaf elements hold text, comments and CDATA sections, and end at
 *     "</" followed by their exact name, optional white space and '>';
 *   - parsing stops when the root element is complete.
 *
 * Whatever libplist would refuse is refused here too, with a reason; so
 * is a nested <plist> and a NUL in a tag name (libplist copies names with
 * strncpy and would read "dict\0x" as "dict").
 *
 * libplist also unescapes entities with one memmove of the rest of the
 * text per entity (quadratic: 400,000 "&lt;" take 6 s); the work is
 * bounded here as the sum of entities x text length.
 */


#include <string.h>

#include "ngx_http_mdm_plist_scan.h"


#define MDM_SCAN_ENTITY_WORK   ((size_t) 0xffffffff)  /* ~80 ms of memmove */

#define MDM_SCAN_BAD(reason)   "body is not a property list: " reason

#define MDM_SCAN_LEAF          1
#define MDM_SCAN_DICT          'd'
#define MDM_SCAN_ARRAY         'a'
#define MDM_SCAN_ROOT          'r'          /* an empty root: never closed */


typedef struct {
    const char         *name;
    size_t              len;
    int                 kind;
} mdm_scan_elt_t;


static const char *mdm_scan_ws(const char *p, const char *end);
static const char *mdm_scan_next(const char *p, const char *end,
    const char *set, size_t n, int quotes);
static const char *mdm_scan_str(const char *p, const char *end,
    const char *s, size_t n, int quotes);
static const char *mdm_scan_text(const char **pp, const char *end,
    const char *name, size_t len, size_t *work);
static const mdm_scan_elt_t *mdm_scan_elt(const char *name, size_t len);


static const mdm_scan_elt_t  mdm_scan_elts[] = {
    { "dict", 4, MDM_SCAN_DICT },
    { "array", 5, MDM_SCAN_ARRAY },
    { "key", 3, MDM_SCAN_LEAF },
    { "string", 6, MDM_SCAN_LEAF },
    { "integer", 7, MDM_SCAN_LEAF },
    { "real", 4, MDM_SCAN_LEAF },
    { "true", 4, MDM_SCAN_LEAF },
    { "false", 5, MDM_SCAN_LEAF },
    { "data", 4, MDM_SCAN_LEAF },
    { "date", 4, MDM_SCAN_LEAF },
    { NULL, 0, 0 }
};


const char *
mdm_plist_scan(const char *body, size_t len, int depth_max,
    size_t elements_max)
{
    int                    depth, in_plist, empty;
    char                   stack[MDM_SCAN_DEPTH_MAX + 1];
    size_t                 n, namelen, work;
    const char            *p, *q, *end, *name, *reason;
    const mdm_scan_elt_t  *e;

    if (depth_max > MDM_SCAN_DEPTH_MAX) {
        depth_max = MDM_SCAN_DEPTH_MAX;
    }

    p = body;
    end = body + len;
    depth = 0;
    in_plist = 0;
    n = 0;
    work = 0;

    for ( ;; ) {
        p = mdm_scan_ws(p, end);

        if (p == end) {
            /* libplist refuses an unclosed element; so does its caller */
            return NULL;
        }

        if (*p != '<') {
            return MDM_SCAN_BAD("text outside an element");
        }

        if (++p == end) {
            return MDM_SCAN_BAD("truncated tag");
        }

        if (*p == '?') {
            q = mdm_scan_str(p, end, "?>", 2, 1);
            if (q == NULL) {
                return MDM_SCAN_BAD("unterminated <?");
            }

            p = q + 2;
            continue;
        }

        if (*p == '!') {
            if (end - p > 3 && memcmp(p, "!--", 3) == 0) {
                q = mdm_scan_str(p + 3, end, "-->", 3, 0);
                if (q == NULL) {
                    return MDM_SCAN_BAD("unterminated comment");
                }

                p = q + 3;
                continue;
            }

            if (end - p > 8 && memcmp(p, "!DOCTYPE", 8) == 0) {
                p += 8;

                for ( ;; ) {
                    q = mdm_scan_next(p, end, " \t\r\n[>", 6, 1);
                    if (q == NULL || q == end) {
                        return MDM_SCAN_BAD("unterminated DOCTYPE");
                    }

                    if (*q == '[') {
                        q = mdm_scan_str(q, end, "]>", 2, 1);
                        if (q == NULL) {
                            return MDM_SCAN_BAD("unterminated DOCTYPE");
                        }

                        p = q + 2;
                        break;
                    }

                    if (*q == '>') {
                        p = q + 1;
                        break;
                    }

                    p = mdm_scan_ws(q, end);
                }

                continue;
            }

            return MDM_SCAN_BAD("unknown <! tag");
        }

        /* an element or a closing tag */

        name = p;
        q = mdm_scan_next(p, end, " \r\n\t<>", 6, 0);
        if (q == end) {
            return MDM_SCAN_BAD("truncated tag");
        }

        namelen = q - name;

        if (*q != '>') {
            q = mdm_scan_next(q, end, "<>", 2, 1);
            if (q == NULL || q == end || *q != '>') {
                return MDM_SCAN_BAD("tag without '>'");
            }
        }

        empty = (q[-1] == '/');
        if (empty && (size_t) (q - name - 1) < namelen) {
            namelen = q - name - 1;
        }

        p = q + 1;

        if (memchr(name, '\0', namelen) != NULL) {
            return MDM_SCAN_BAD("NUL in a tag name");
        }

        if (namelen && name[0] == '/') {
            name++;
            namelen--;

            if (namelen == 5 && memcmp(name, "plist", 5) == 0) {
                if (depth != 0 || !in_plist) {
                    return MDM_SCAN_BAD("mismatched closing tag");
                }

                in_plist = 0;
                continue;
            }

            e = mdm_scan_elt(name, namelen);

            if (e == NULL || depth == 0 || stack[depth - 1] != e->kind) {
                return MDM_SCAN_BAD("mismatched closing tag");
            }

            if (--depth == 0) {
                /* the root is complete: libplist reads no further */
                return NULL;
            }

            continue;
        }

        if (++n > elements_max) {
            return "plist has too many elements";
        }

        if (namelen == 5 && memcmp(name, "plist", 5) == 0) {
            if (empty || in_plist || depth != 0) {
                return MDM_SCAN_BAD("empty or nested <plist>");
            }

            in_plist = 1;
            continue;
        }

        e = mdm_scan_elt(name, namelen);
        if (e == NULL) {
            return MDM_SCAN_BAD("unknown element");
        }

        if (e->kind == MDM_SCAN_LEAF) {
            if (!empty) {
                reason = mdm_scan_text(&p, end, name, namelen, &work);
                if (reason) {
                    return reason;
                }
            }

            if (depth == 0) {
                /* a root that is not a container: libplist stops */
                return NULL;
            }

            continue;
        }

        /*
         * libplist adds what follows an empty root <dict/> or <array/> to
         * it, and no closing tag ends it: a level that never closes.
         */

        if (empty && depth != 0) {
            continue;
        }

        if (depth == depth_max) {
            return "plist nested too deeply";
        }

        stack[depth++] = empty ? MDM_SCAN_ROOT : (char) e->kind;
    }
}


static const char *
mdm_scan_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    return p;
}


/*
 * libplist's find_next(): the first byte of set, jumping over a "..."
 * when quotes; end if none, NULL for a quote that is not closed.
 */

static const char *
mdm_scan_next(const char *p, const char *end, const char *set, size_t n,
    int quotes)
{
    while (p < end) {
        if (quotes && *p == '"') {
            p = memchr(p + 1, '"', end - p - 1);
            if (p == NULL) {
                return NULL;
            }
        }

        if (memchr(set, *p, n) != NULL) {
            return p;
        }

        p++;
    }

    return end;
}


/* libplist's find_str(): where s starts, or NULL. */

static const char *
mdm_scan_str(const char *p, const char *end, const char *s, size_t n,
    int quotes)
{
    while ((size_t) (end - p) >= n) {
        if (memcmp(p, s, n) == 0) {
            return p;
        }

        if (quotes && *p == '"') {
            p = memchr(p + 1, '"', end - p - 1);
            if (p == NULL) {
                return NULL;
            }
        }

        p++;
    }

    return NULL;
}


/* libplist's get_text_parts(): text, comments and CDATA up to </name>. */

static const char *
mdm_scan_text(const char **pp, const char *end, const char *name,
    size_t len, size_t *work)
{
    size_t       amps;
    const char  *p, *q, *a;

    p = *pp;

    for ( ;; ) {
        q = memchr(p, '<', end - p);
        if (q == NULL) {
            return MDM_SCAN_BAD("unterminated element");
        }

        /* each entity costs libplist a memmove of the rest of the text */
        amps = 0;
        for (a = memchr(p, '&', q - p); a; a = memchr(a, '&', q - a)) {
            amps++;
            a++;
        }

        if (amps && (size_t) (q - p) > (MDM_SCAN_ENTITY_WORK - *work) / amps)
        {
            return "plist has too many entities";
        }

        *work += amps * (q - p);

        p = q + 1;
        if (p == end) {
            return MDM_SCAN_BAD("unterminated element");
        }

        if (*p == '/') {
            break;
        }

        if (*p != '!') {
            return MDM_SCAN_BAD("element inside a leaf element");
        }

        p++;

        if (end - p < 2) {
            return MDM_SCAN_BAD("unterminated element");
        }

        if (p[0] == '-' && p[1] == '-') {
            q = mdm_scan_str(p + 2, end, "-->", 3, 0);
            if (q == NULL) {
                return MDM_SCAN_BAD("unterminated comment");
            }

            p = q + 3;
            continue;
        }

        if (*p == '[' && end - p > 9 && memcmp(p + 1, "CDATA[", 6) == 0) {
            q = mdm_scan_str(p + 7, end, "]]>", 3, 0);
            if (q == NULL) {
                return MDM_SCAN_BAD("unterminated CDATA");
            }

            p = q + 3;
            continue;
        }

        return MDM_SCAN_BAD("unknown <! tag");
    }

    p++;

    if ((size_t) (end - p) <= len || memcmp(p, name, len) != 0) {
        return MDM_SCAN_BAD("mismatched closing tag");
    }

    p = mdm_scan_ws(p + len, end);

    if (p == end || *p != '>') {
        return MDM_SCAN_BAD("mismatched closing tag");
    }

    *pp = p + 1;

    return NULL;
}


static const mdm_scan_elt_t *
mdm_scan_elt(const char *name, size_t len)
{
    const mdm_scan_elt_t  *e;

    for (e = mdm_scan_elts; e->name; e++) {
        if (e->len == len && memcmp(e->name, name, len) == 0) {
            return e;
        }
    }

    return NULL;
}
