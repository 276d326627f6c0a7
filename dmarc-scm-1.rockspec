-- LuaRocks build of lua-dmarc: the C core compiles statically into the
-- dmarc.core module, so Lua users need no libdmarc.so. DMARC_STATIC keeps the
-- core's functions inside each module: a module exports its luaopen_* only. tests/check-rockspec
-- keeps the source lists here equal to the Makefile's (make print-sources)
-- and the Lua module list equal to the files under lua/.
rockspec_format = '3.0'
package = 'dmarc'
version = 'scm-1'

source = {
  url = 'git+https://github.com/lua-dmarc/lua-dmarc.git',
  branch = 'main',
}

description = {
  summary = 'DMARC policy engine (RFC 9989, RFC 7489 mode) for Lua and Rspamd',
  detailed = [[
A sans-I/O DMARC engine in C with a Lua binding: record and From parsing,
RFC 9989 DNS tree walk and RFC 7489 Public Suffix List discovery, identifier
alignment and policy application. DNS stays with the caller: synchronous and
callback-style drivers run the query loop, and `dmarc eval` evaluates
messages described as JSON lines.
]],
  labels = { 'email', 'dmarc', 'rspamd' },
  license = 'MIT',
}

-- Lua modules the Lua layer and the command line require. Debian ships them as lua-cjson,
-- lua-socket and lua-sec; with those installed, `luarocks make --deps-mode=none` builds
-- offline (README, "Install").
dependencies = {
  'lua >= 5.1, < 5.5',
  'lua-cjson >= 2.1',
  'luasocket >= 3.0',
  'luasec >= 1.0',
}

-- C libraries the modules link: dmarc.core (idn2, psl), dmarc.io (spf2, opendkim, ldns),
-- dmarc.redis (hiredis), dmarc.xml (xml2, z).
external_dependencies = {
  LIBIDN2 = { header = 'idn2.h', library = 'idn2' },
  LIBPSL = { header = 'libpsl.h', library = 'psl' },
  LIBSPF2 = { header = 'spf2/spf.h', library = 'spf2' },
  OPENDKIM = { header = 'opendkim/dkim.h', library = 'opendkim' },
  LDNS = { header = 'ldns/ldns.h', library = 'ldns' },
  HIREDIS = { header = 'hiredis/hiredis.h', library = 'hiredis' },
  LIBXML2 = { header = 'libxml2/libxml/parser.h', library = 'xml2' },
  OPENSSL = { header = 'openssl/hmac.h', library = 'crypto' },
  ZLIB = { header = 'zlib.h', library = 'z' },
}

build = {
  type = 'builtin',
  modules = {
    -- The binding plus every core/src/*.c and the libpsl adapter.
    ['dmarc.core'] = {
      sources = {
        'adapters/src/psl.c',
        'core/src/align.c',
        'core/src/cache.c',
        'core/src/ctx.c',
        'core/src/domain.c',
        'core/src/eval.c',
        'core/src/from.c',
        'core/src/record.c',
        'core/src/util.c',
        'core/src/walk.c',
        'bindings/dmarc_core.c',
      },
      incdirs = { 'core/include', 'core/src', 'adapters/include', 'bindings',
        '$(LIBIDN2_INCDIR)', '$(LIBPSL_INCDIR)' },
      libdirs = { '$(LIBIDN2_LIBDIR)', '$(LIBPSL_LIBDIR)' },
      libraries = { 'idn2', 'psl' },
      defines = { 'DMARC_WITH_LIBPSL=1', 'DMARC_STATIC', '_POSIX_C_SOURCE=200809L' },
    },

    -- Further C modules go here, one entry each, with the sources
    -- `make print-sources` lists for them.
    -- dmarc.io: resolvers (zone file, DNS server), libspf2 and libopendkim
    -- adapters, with its own copy of the core.
    ['dmarc.io'] = {
      sources = {
        'adapters/src/dkim.c',
        'adapters/src/dns.c',
        'adapters/src/dns_ldns.c',
        'adapters/src/psl.c',
        'adapters/src/spf.c',
        'adapters/src/zone.c',
        'core/src/align.c',
        'core/src/cache.c',
        'core/src/ctx.c',
        'core/src/domain.c',
        'core/src/eval.c',
        'core/src/from.c',
        'core/src/record.c',
        'core/src/util.c',
        'core/src/walk.c',
        'bindings/dmarc_io.c',
      },
      incdirs = { 'core/include', 'core/src', 'adapters/include', 'bindings',
        '$(LIBIDN2_INCDIR)', '$(LIBPSL_INCDIR)' },
      libdirs = { '$(LIBIDN2_LIBDIR)', '$(LIBPSL_LIBDIR)' },
      libraries = { 'spf2', 'opendkim', 'ldns', 'idn2', 'psl' },
      defines = { 'DMARC_WITH_LIBPSL=1', 'DMARC_STATIC', '_POSIX_C_SOURCE=200809L' },
    },
    -- dmarc.redis: the hiredis client (override store, report rows).
    ['dmarc.redis'] = {
      sources = { 'bindings/dmarc_redis.c' },
      incdirs = { 'core/include', 'bindings' },
      libraries = { 'hiredis' },
      defines = { 'DMARC_STATIC', '_POSIX_C_SOURCE=200809L' },
    },
    -- dmarc.xml: libxml2, zlib and libcrypto for `dmarc report ingest` (parse, inflate,
    -- unzip, HMAC-SHA256) and the reports we send (gzip).
    ['dmarc.xml'] = {
      sources = { 'bindings/dmarc_xml.c', 'core/src/util.c' },
      incdirs = { 'core/include', 'core/src', 'bindings', '$(LIBXML2_INCDIR)/libxml2', '$(OPENSSL_INCDIR)' },
      libdirs = { '$(LIBXML2_LIBDIR)', '$(OPENSSL_LIBDIR)' },
      libraries = { 'xml2', 'z', 'crypto' },
      defines = { 'DMARC_STATIC', '_POSIX_C_SOURCE=200809L' },
    },

    -- Pure Lua: the front module and every lua/dmarc/**/*.lua.
    ['dmarc'] = 'lua/dmarc.lua',
    ['dmarc.cli.check'] = 'lua/dmarc/cli/check.lua',
    ['dmarc.cli.common'] = 'lua/dmarc/cli/common.lua',
    ['dmarc.cli.eval'] = 'lua/dmarc/cli/eval.lua',
    ['dmarc.cli.inspect'] = 'lua/dmarc/cli/inspect.lua',
    ['dmarc.cli.override'] = 'lua/dmarc/cli/override.lua',
    ['dmarc.cli.report.generate'] = 'lua/dmarc/cli/report/generate.lua',
    ['dmarc.cli.report.ingest'] = 'lua/dmarc/cli/report/ingest.lua',
    ['dmarc.cli.report.send'] = 'lua/dmarc/cli/report/send.lua',
    ['dmarc.cli.report.serve'] = 'lua/dmarc/cli/report/serve.lua',
    ['dmarc.cli.report.summary'] = 'lua/dmarc/cli/report/summary.lua',
    ['dmarc.owner.dashboard'] = 'lua/dmarc/owner/dashboard.lua',
    ['dmarc.owner.failures'] = 'lua/dmarc/owner/failures.lua',
    ['dmarc.owner.ingest'] = 'lua/dmarc/owner/ingest.lua',
    ['dmarc.owner.summary'] = 'lua/dmarc/owner/summary.lua',
    ['dmarc.receive.auth'] = 'lua/dmarc/receive/auth.lua',
    ['dmarc.receive.json_dns'] = 'lua/dmarc/receive/json_dns.lua',
    ['dmarc.receive.message'] = 'lua/dmarc/receive/message.lua',
    ['dmarc.receive.resolve'] = 'lua/dmarc/receive/resolve.lua',
    ['dmarc.redis.cluster'] = 'lua/dmarc/redis/cluster.lua',
    ['dmarc.redis.connect'] = 'lua/dmarc/redis/connect.lua',
    ['dmarc.redis.keys'] = 'lua/dmarc/redis/keys.lua',
    ['dmarc.report.failure'] = 'lua/dmarc/report/failure.lua',
    ['dmarc.report.generate'] = 'lua/dmarc/report/generate.lua',
    ['dmarc.report.mail'] = 'lua/dmarc/report/mail.lua',
    ['dmarc.report.rows'] = 'lua/dmarc/report/rows.lua',
    ['dmarc.report.send'] = 'lua/dmarc/report/send.lua',
    ['dmarc.report.xml'] = 'lua/dmarc/report/xml.lua',
    ['dmarc.site.policy'] = 'lua/dmarc/site/policy.lua',
    ['dmarc.site.sandbox'] = 'lua/dmarc/site/sandbox.lua',
    ['dmarc.site.store'] = 'lua/dmarc/site/store.lua',
    ['dmarc.util.config'] = 'lua/dmarc/util/config.lua',
    ['dmarc.util.files'] = 'lua/dmarc/util/files.lua',
    ['dmarc.util.json'] = 'lua/dmarc/util/json.lua',
    ['dmarc.util.log'] = 'lua/dmarc/util/log.lua',
    ['dmarc.util.options'] = 'lua/dmarc/util/options.lua',
    ['dmarc.util.text'] = 'lua/dmarc/util/text.lua',
    ['dmarc.util.time'] = 'lua/dmarc/util/time.lua',
  },
  install = {
    bin = { dmarc = 'bin/dmarc' },
  },
}

test = {
  type = 'command',
  command = 'make check-lua',
}
