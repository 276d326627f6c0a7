-- luacheck configuration (Rspamd's lua_style: 2 spaces, single quotes, no globals)
std = 'max'
max_line_length = 110
codes = true
files['tests/**/*_spec.lua'] = { std = 'max+busted' }
files['plugins/rspamd/**/*.lua'] = {
  globals = { 'rspamd_config' },
  read_globals = { 'rspamd_plugins', 'confighelp', 'rspamd_paths', 'rspamd_version' },
}
exclude_files = { 'build/**' }
