/*
 * parse.h -- the one parser of memcached's line protocols (text and meta):
 * the command table, the tokenizer and memcached's number rules.
 *
 * Why this file exists: every part of the server that has to know what a
 * command is -- the dispatcher (proto.c), the batch prefetcher (prefetch.c)
 * and latency classification (latency.h) -- reads the one table below, and
 * both protocols split lines and read numbers with the one tokenizer and
 * the one set of number helpers here, so they cannot drift apart.  A
 * command line becomes an sm_request (its command id and tokens); handlers
 * take that struct, never raw text, so a binary protocol can sit beside
 * this one and feed the same dispatch.
 *
 * Nothing here allocates or touches a connection: prefetch.c and the C
 * unit tests link parse.c without the rest of the protocol layer.
 */
#ifndef SM_PARSE_H
#define SM_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../latency.h"

/*
 * Every command either protocol knows, in one table:
 *   X(name, protocol, latency class, prefetch, min ntokens, max ntokens, handler)
 * name      the command word (also the C name of its id, SM_CMD_<name>);
 * protocol  TEXT or META: which family answers it (and its errors);
 * latency   the enum sm_lat_cmd it is timed as (latency.h), without SM_LAT_;
 * prefetch  what prefetch.c does with the keys after the word: NONE, ONE
 *           (the next token is the key) or MANY (every following token);
 * ntokens   memcached's token count (with its terminal token) the command
 *           accepts; outside it a text command is answered "ERROR" before
 *           its handler runs (meta handlers check their own tokens);
 * handler   the function proto.c dispatches to (proto.h).
 */
#define SM_COMMANDS(X)                                                        \
    X(get, TEXT, get, MANY, 3, SM_MAX_TOKENS, proto_text_get)                 \
    X(gets, TEXT, gets, MANY, 3, SM_MAX_TOKENS, proto_text_get)              \
    X(gat, TEXT, gat, NONE, 3, SM_MAX_TOKENS, proto_text_get)                 \
    X(gats, TEXT, gats, NONE, 3, SM_MAX_TOKENS, proto_text_get)              \
    X(bget, TEXT, other, MANY, 3, SM_MAX_TOKENS, proto_text_get)              \
    X(set, TEXT, set, NONE, 6, 7, proto_text_store)                           \
    X(add, TEXT, add, NONE, 6, 7, proto_text_store)                           \
    X(replace, TEXT, replace, NONE, 6, 7, proto_text_store)                   \
    X(append, TEXT, append, NONE, 6, 7, proto_text_store)                     \
    X(prepend, TEXT, prepend, NONE, 6, 7, proto_text_store)                   \
    X(cas, TEXT, cas, NONE, 7, 8, proto_text_store)                           \
    X(delete, TEXT, delete, NONE, 3, 5, proto_text_delete)                    \
    X(incr, TEXT, incr, NONE, 4, 5, proto_text_arith)                         \
    X(decr, TEXT, decr, NONE, 4, 5, proto_text_arith)                         \
    X(touch, TEXT, touch, NONE, 4, 5, proto_text_touch)                       \
    X(stats, TEXT, stats, NONE, 2, SM_MAX_TOKENS, proto_text_stats)           \
    X(flush_all, TEXT, flush_all, NONE, 2, 4, proto_text_flush_all)           \
    X(version, TEXT, version, NONE, 2, SM_MAX_TOKENS, proto_text_version)     \
    X(verbosity, TEXT, other, NONE, 3, 4, proto_text_verbosity)               \
    X(lru, TEXT, other, NONE, 3, SM_MAX_TOKENS, proto_text_lru)               \
    X(cache_memlimit, TEXT, other, NONE, 3, 4, proto_text_cache_memlimit)     \
    X(slabs, TEXT, other, NONE, 2, SM_MAX_TOKENS, proto_text_slabs)           \
    X(shutdown, TEXT, other, NONE, 2, SM_MAX_TOKENS, proto_text_shutdown)     \
    X(refresh_certs, TEXT, other, NONE, 2, SM_MAX_TOKENS, proto_text_refresh_certs) \
    X(quit, TEXT, other, NONE, 2, SM_MAX_TOKENS, proto_text_quit)             \
    X(lru_crawler, TEXT, other, NONE, 2, SM_MAX_TOKENS, proto_text_lru_crawler) \
    X(watch, TEXT, other, NONE, 2, SM_MAX_TOKENS, proto_text_watch)           \
    X(mg, META, mg, ONE, 2, SM_MAX_TOKENS, proto_meta_get)                    \
    X(ms, META, ms, NONE, 2, SM_MAX_TOKENS, proto_meta_set)                   \
    X(md, META, md, NONE, 2, SM_MAX_TOKENS, proto_meta_delete)                \
    X(ma, META, ma, NONE, 2, SM_MAX_TOKENS, proto_meta_arith)                 \
    X(mn, META, mn, NONE, 2, SM_MAX_TOKENS, proto_meta_noop)                  \
    X(me, META, me, NONE, 2, SM_MAX_TOKENS, proto_meta_debug)

/* memcached's MAX_TOKENS: 23 split tokens plus the terminal one. */
#define SM_MAX_TOKENS 24

/* Command ids: SM_CMD_NONE for a word that is no command. */
enum sm_cmd {
    SM_CMD_NONE = 0,
#define SM_X(name, proto, lat, pf, lo, hi, handler) SM_CMD_##name,
    SM_COMMANDS(SM_X)
#undef SM_X
    SM_NCMDS
};

/* Which protocol family answers a command. */
enum sm_proto { SM_PROTO_TEXT = 0, SM_PROTO_META = 1 };

/* What the batch prefetcher does with a command's keys. */
enum sm_prefetch { SM_PF_NONE = 0, SM_PF_ONE = 1, SM_PF_MANY = 2 };

/* One row of the command table (sm_cmds[id]). */
struct sm_cmd_info {
    const char *name;    /* the command word */
    uint8_t len;         /* strlen(name) */
    uint8_t proto;       /* enum sm_proto */
    uint8_t lat;         /* enum sm_lat_cmd */
    uint8_t prefetch;    /* enum sm_prefetch */
    uint8_t min_ntokens; /* fewest tokens (with the terminal one) accepted */
    uint8_t max_ntokens; /* most tokens accepted */
};

/* The table, indexed by enum sm_cmd; row SM_CMD_NONE is an unknown command. */
extern const struct sm_cmd_info sm_cmds[SM_NCMDS];

/* The command a word of n bytes names, SM_CMD_NONE if none: a switch on the
 * length and the first bytes, then one comparison. */
int sm_cmd_lookup(const char *word, size_t n);

/* One token of a command line, NUL-terminated in place. */
typedef struct sm_token {
    char *value;   /* first byte; for the terminal token, the unsplit rest of the line or NULL */
    size_t length; /* bytes without the NUL; 0 marks the terminal token */
} sm_token;

/* A parsed command line: what every handler takes. */
typedef struct sm_request {
    int cmd;                          /* enum sm_cmd (SM_CMD_NONE: unknown word) */
    size_t ntokens;                   /* tokens including the terminal one (memcached's count) */
    sm_token tokens[SM_MAX_TOKENS];   /* tokens[0] is the command word */
} sm_request;

/*
 * memcached's tokenize_command: split line[0..len) in place on ' ' (runs of
 * spaces are one separator; tabs and '\r' belong to tokens); the line ends
 * at its first NUL.  At most SM_MAX_TOKENS - 1 tokens are split off, then a
 * terminal token of length 0 whose value is the unsplit rest of the line
 * (get-type commands read their further keys there) or NULL when the whole
 * line was split.  line[len] must be writable (it becomes a NUL).  Sets
 * r->ntokens and r->tokens, and r->cmd from the first token.
 */
void sm_parse_line(sm_request *r, char *line, size_t len);

/*
 * memcached's number rules (its safe_strtoull/safe_strtoul/safe_strtol, as
 * 1.6.18 behaves on a 64-bit build): base 10, leading white space and a
 * '+' or '-' accepted as strto* accept them, the number must end at white
 * space or the end of the string, overflow of 64 bits fails, and then:
 *  - unsigned: a '-' fails only when the wrapped value looks negative as a
 *    signed 64-bit number ("-1" fails, "-0" is 0);
 *  - 32-bit results keep the low 32 bits of the 64-bit value
 *    ("4294967297" is 1, "-4294967295" an exptime of 1).
 * On failure *out is 0.
 */
bool safe_strtoull(const char *s, uint64_t *out);
bool safe_strtoul(const char *s, uint32_t *out);
bool safe_strtol(const char *s, int32_t *out);
/* memcached's safe_strtod: a number strtod takes, then white space or the end. */
bool safe_strtod(const char *s, double *out);

#endif
