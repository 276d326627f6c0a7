--- The domain owner's dashboard over the ingested aggregate reports: volume
-- and pass rate over time (SVG drawn here, no script at all), the sources
-- table with a drill-down per source, reporters, forwarding, likely
-- spoofing and the readiness verdict. `dmarc report serve` runs it.
--
-- Three layers, each testable alone:
--   render_*      pure: summary tables in, HTML/SVG text out; every value
--                 that came from a report goes through `html` (escaped,
--                 valid UTF-8)
--   handle        pure routing: a parsed request and a data source in, a
--                 response out
--   serve         the HTTP/1.1 server on lua-socket: loopback by default,
--                 one request per connection, bounded request size and time,
--                 a Host check against DNS rebinding
local summary = require 'dmarc.owner.summary'
local keys = require 'dmarc.redis.keys'
local text = require 'dmarc.util.text'
local failures = require 'dmarc.owner.failures'

local M = {}

M.limits = {
  max_request = 8192,      -- bytes of a request line plus headers
  request_timeout = 5,     -- seconds to receive them
  max_params = 32,         -- query parameters read
  max_headers = 100,       -- header fields of a request
  max_target = 4096,       -- bytes of a request target
  max_domains = 5000,      -- domains listed on the index page
  page_size = summary.limits.top, -- sources per page of a domain's sources table
  max_page = 10000,        -- highest page number asked for
  max_days = summary.limits.max_days,
}

M.defaults = { listen = '127.0.0.1:8025', days = 30 }

-- Served with every page: no script, nothing from elsewhere, no framing.
M.CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
  .. "form-action 'self'; frame-ancestors 'none'"

-- ---------------------------------------------------------------------------
-- Escaping

local HTML_ESC = { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;',
                   ["'"] = '&#39;' }

--- Text for HTML element content and attribute values: valid UTF-8, no
-- control characters, markup characters escaped.
function M.html(s)
  s = tostring(s == nil and '' or s)
  s = text.sanitize(s):gsub('[%z\1-\8\11\12\14-\31\127]', '?')
  return (s:gsub('[&<>"\']', HTML_ESC))
end
local html = M.html

--- Percent-encoding for a query value.
function M.url_encode(s)
  return (tostring(s):gsub('[^%w%-%._~]', function(c) return string.format('%%%02X', c:byte()) end))
end
local url = M.url_encode

-- Rounded down: 84,889 of 84,890 is 99.9 %, never 100.0 %.
local pct = summary.percent

local function day_label(day)
  return summary.day_text(day)
end

-- ---------------------------------------------------------------------------
-- Charts (SVG, drawn on the server)

-- A round upper bound for an axis: 1, 2 or 5 times a power of ten.
local function nice_max(v)
  if v <= 0 then return 1 end
  local p = 10 ^ math.floor(math.log(v) / math.log(10))
  for _, m in ipairs({ 1, 2, 5, 10 }) do
    if m * p >= v then return m * p end
  end
  return 10 * p
end
M.nice_max = nice_max

local function num(x)
  return string.format('%.1f', x)
end

--- Messages per day, DMARC pass and fail stacked.
function M.volume_chart(daily)
  local W, H, left, right, top, bottom = 760, 240, 56, 12, 16, 40
  local pw, ph = W - left - right, H - top - bottom
  local n = math.max(#daily, 1)
  local maxv = 0
  for _, d in ipairs(daily) do maxv = math.max(maxv, d.messages) end
  local ymax = nice_max(maxv)
  local function y(v) return top + ph * (1 - v / ymax) end
  local bw = pw / n
  local bar = math.max(1, bw * 0.7)
  local out = {
    string.format('<svg id="volume-chart" class="chart" viewBox="0 0 %d %d" role="img" '
                  .. 'aria-label="Messages per day">', W, H),
  }
  -- Grid lines at whole numbers: 4 or 5 steps when they divide the maximum.
  local steps = 1
  for _, d in ipairs({ 4, 5, 2 }) do
    if (ymax / d) % 1 == 0 then
      steps = d
      break
    end
  end
  for i = 0, steps do
    local v = ymax * i / steps
    out[#out + 1] = string.format('<line class="grid" x1="%d" x2="%d" y1="%s" y2="%s"/>'
                                  .. '<text class="axis" x="%d" y="%s" text-anchor="end">%s</text>',
                                  left, W - right, num(y(v)), num(y(v)), left - 6, num(y(v) + 4),
                                  string.format('%g', v))
  end
  local every = math.max(1, math.ceil(n / 10))
  for i, d in ipairs(daily) do
    local x = left + (i - 1) * bw + (bw - bar) / 2
    local fail = d.messages - d.dmarc_pass
    out[#out + 1] = string.format(
      '<g class="bar" data-day="%s" data-messages="%d" data-pass="%d"><title>%s: %d messages, '
      .. '%d DMARC pass, %d fail</title>', d.day, d.messages, d.dmarc_pass, day_label(d.day),
      d.messages, d.dmarc_pass, fail)
    if d.dmarc_pass > 0 then
      out[#out + 1] = string.format('<rect class="pass" x="%s" y="%s" width="%s" height="%s"/>',
                                    num(x), num(y(d.dmarc_pass)), num(bar),
                                    num(y(0) - y(d.dmarc_pass)))
    end
    if fail > 0 then
      out[#out + 1] = string.format('<rect class="fail" x="%s" y="%s" width="%s" height="%s"/>',
                                    num(x), num(y(d.messages)), num(bar),
                                    num(y(d.dmarc_pass) - y(d.messages)))
    end
    out[#out + 1] = '</g>'
    if (i - 1) % every == 0 then
      out[#out + 1] = string.format('<text class="axis" x="%s" y="%d" text-anchor="middle">%s</text>',
                                    num(x + bar / 2), H - bottom + 16, d.day:sub(5, 6) .. '-'
                                      .. d.day:sub(7, 8))
    end
  end
  out[#out + 1] = string.format('<line class="axisline" x1="%d" x2="%d" y1="%s" y2="%s"/>', left,
                                W - right, num(y(0)), num(y(0)))
  out[#out + 1] = '</svg>'
  return table.concat(out)
end

--- DMARC pass rate per day (days without data are left out of the line).
function M.rate_chart(daily)
  local W, H, left, right, top, bottom = 760, 200, 56, 12, 16, 40
  local pw, ph = W - left - right, H - top - bottom
  local n = math.max(#daily, 1)
  local bw = pw / n
  local function y(r) return top + ph * (1 - r) end
  local out = {
    string.format('<svg id="pass-rate-chart" class="chart" viewBox="0 0 %d %d" role="img" '
                  .. 'aria-label="DMARC pass rate per day">', W, H),
  }
  for i = 0, 4 do
    local r = i / 4
    out[#out + 1] = string.format('<line class="grid" x1="%d" x2="%d" y1="%s" y2="%s"/>'
                                  .. '<text class="axis" x="%d" y="%s" text-anchor="end">%d%%</text>',
                                  left, W - right, num(y(r)), num(y(r)), left - 6, num(y(r) + 4),
                                  i * 25)
  end
  local points, dots = {}, {}
  for i, d in ipairs(daily) do
    if d.messages > 0 then
      local r = d.dmarc_pass / d.messages
      local x = left + (i - 0.5) * bw
      points[#points + 1] = num(x) .. ',' .. num(y(r))
      dots[#dots + 1] = string.format('<circle class="point" cx="%s" cy="%s" r="3.5" '
                                      .. 'data-day="%s" data-rate="%.1f"><title>%s: %s DMARC '
                                      .. 'pass</title></circle>', num(x), num(y(r)), d.day,
                                      r * 100, day_label(d.day), pct(r))
    end
  end
  if #points > 1 then
    out[#out + 1] = '<polyline class="rate" points="' .. table.concat(points, ' ') .. '"/>'
  end
  out[#out + 1] = table.concat(dots)
  local every = math.max(1, math.ceil(n / 10))
  for i, d in ipairs(daily) do
    if (i - 1) % every == 0 then
      out[#out + 1] = string.format('<text class="axis" x="%s" y="%d" text-anchor="middle">%s</text>',
                                    num(left + (i - 0.5) * bw), H - bottom + 16,
                                    d.day:sub(5, 6) .. '-' .. d.day:sub(7, 8))
    end
  end
  out[#out + 1] = '</svg>'
  return table.concat(out)
end

M.CLASS_LABEL = {
  pass = 'DMARC pass', forwarded = 'forwarded (DKIM pass, SPF fail)',
  unaligned = 'SPF/DKIM pass, not aligned', forwarded_broken = 'forwarded, DKIM broken',
  spoof = 'likely spoofing',
}

--- One horizontal bar: the share of each class.
function M.class_chart(classes, total)
  local W, H = 760, 28
  local out = { string.format('<svg id="class-chart" class="chart" viewBox="0 0 %d %d" role="img" '
                              .. 'aria-label="Messages by class">', W, H) }
  local x = 0
  for _, c in ipairs(summary.CLASSES) do
    local v = classes[c] or 0
    local w = total > 0 and W * v / total or 0
    out[#out + 1] = string.format('<rect class="cls-%s" x="%s" y="0" width="%s" height="%d" '
                                  .. 'data-class="%s" data-messages="%d"><title>%s: %d</title></rect>',
                                  c, num(x), num(w), H, c, v, M.CLASS_LABEL[c], v)
    x = x + w
  end
  out[#out + 1] = '</svg>'
  return table.concat(out)
end

-- ---------------------------------------------------------------------------
-- Pages

M.CSS = [[
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2433; background: #f5f6f8; }
header { background: #1d2433; color: #fff; padding: 10px 24px; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
main { padding: 16px 24px; max-width: 1200px; }
h1 { font-size: 20px; margin: 8px 0 12px; }
h2 { font-size: 16px; margin: 20px 0 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 10px 14px;
        min-width: 150px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .l { color: #5b6475; font-size: 12px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 12px 16px;
          margin: 14px 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceef2; vertical-align: top; }
th { color: #5b6475; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.chart { width: 100%; height: auto; display: block; }
.chart .grid { stroke: #eceef2; }
.chart .axisline { stroke: #9aa3b2; }
.chart .axis { fill: #5b6475; font-size: 11px; }
.chart .pass { fill: #2f9e62; }
.chart .fail { fill: #d9534f; }
.chart .rate { fill: none; stroke: #3267d6; stroke-width: 2; }
.chart .point { fill: #3267d6; }
.cls-pass { fill: #2f9e62; } .cls-forwarded { fill: #7fc8a0; } .cls-unaligned { fill: #f0ad4e; }
.cls-forwarded_broken { fill: #b98be0; } .cls-spoof { fill: #d9534f; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
.legend .cls-pass { background: #2f9e62; } .legend .cls-forwarded { background: #7fc8a0; }
.legend .cls-unaligned { background: #f0ad4e; } .legend .cls-forwarded_broken { background: #b98be0; }
.legend .cls-spoof { background: #d9534f; }
.verdict { font-size: 18px; font-weight: 600; }
.verdict.ready, .verdict.enforced { color: #2f9e62; }
.verdict.nearly_ready { color: #c77c02; }
.verdict.not_ready { color: #d9534f; }
.verdict.insufficient_data { color: #5b6475; }
.hint { color: #5b6475; font-size: 12px; }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 12px; background: #eceef2; }
form.period { margin: 4px 0 8px; }
code { font-size: 12px; }
]]

local function page(title, body)
  return table.concat({
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    '<title>', html(title), '</title>',
    '<link rel="stylesheet" href="/static/dashboard.css"></head><body>',
    '<header><a href="/">DMARC reports</a></header><main>', body, '</main></body></html>\n',
  })
end

local function values_cell(list, n)
  local out = {}
  for i, v in ipairs(list or {}) do
    if i > n then break end
    out[#out + 1] = html(v.value) .. ' <span class="hint">(' .. v.messages .. ')</span>'
  end
  return table.concat(out, '<br>')
end

local function period_form(action, fields, days, until_day)
  local out = { '<form class="period" method="get" action="', action, '">' }
  for k, v in pairs(fields) do
    out[#out + 1] = '<input type="hidden" name="' .. html(k) .. '" value="' .. html(v) .. '">'
  end
  out[#out + 1] = 'days <input name="days" size="4" value="' .. html(days) .. '"> until '
    .. '<input name="until" size="10" value="' .. html(until_day or '') .. '"> '
    .. '<button type="submit">show</button></form>'
  return table.concat(out)
end

--- The index: every domain with ingested reports.
-- @param domains {table} array of {domain, days (count), last_day}
function M.render_index(domains, opts)
  opts = opts or {}
  local rows = {}
  for _, d in ipairs(domains) do
    rows[#rows + 1] = string.format('<tr><td><a href="/domain?d=%s">%s</a></td><td class="n">%d'
                                    .. '</td><td>%s</td></tr>', url(d.domain), html(d.domain),
                                    d.days, html(day_label(d.last_day)))
  end
  local body = table.concat({
    '<h1>Policy domains</h1>',
    '<section><table id="domains"><thead><tr><th>domain</th><th class="n">days with reports'
      .. '</th><th>latest day</th></tr></thead><tbody>',
    table.concat(rows),
    '</tbody></table>',
    #domains == 0 and '<p>No reports ingested yet: <code>dmarc report ingest PATH</code>.</p>' or '',
    opts.truncated and '<p class="hint">Only the first domains are listed.</p>' or '',
    '</section>',
  })
  return page('DMARC reports', body)
end

local function card(id, value, label)
  return string.format('<div class="card"><div class="v" id="%s">%s</div><div class="l">%s</div>'
                       .. '</div>', id, value, label)
end

local function hints_html(hints, dom)
  local out = {}
  for _, h in ipairs(hints or {}) do
    out[#out + 1] = '<div class="hint">' .. html(summary.hint_text(h, dom, function(x) return x end))
      .. '</div>'
  end
  return table.concat(out)
end

local function source_link(dom, ip, q)
  return string.format('<a href="/source?d=%s&amp;ip=%s%s">%s</a>', url(dom), url(ip), q or '',
                       html(ip))
end

-- A link from an aggregate source to its failure reports, when it has any.
local function failure_link(s, dom, ip, q)
  local n = s.failure_reports and s.failure_reports.by_ip[ip]
  if not n then return '' end
  return string.format(' <a class="fail-link" href="/source?d=%s&amp;ip=%s%s#failures">%d '
                       .. 'failure report%s</a>', url(dom), url(ip), q or '', n,
                       n == 1 and '' or 's')
end

-- The failure reports of a domain (per source IP and day) or of one source.
local function failures_section(fr, dom, q, one_source)
  local out = {}
  local function add(x) out[#out + 1] = x end
  add(string.format('<section id="failures"><h2>Failure reports: <span id="failure-reports">%d'
                    .. '</span> (<span id="failure-incidents">%d</span> messages)</h2>',
                    fr.reports, fr.incidents))
  if fr.not_itemised > 0 then
    add('<p class="hint">' .. fr.not_itemised .. ' more failure reports were counted but not '
        .. 'stored (limit per day).</p>')
  end
  if one_source then
    if fr.rows and #fr.rows > 0 then
      add('<table id="failure-rows"><thead><tr><th>arrival (UTC)</th><th class="n">messages</th>'
          .. '<th>what failed</th><th>header From</th><th>DKIM</th><th>SPF record</th>'
          .. '<th>delivery</th><th>reporter</th></tr></thead><tbody>')
      for _, r in ipairs(fr.rows) do
        add(string.format('<tr><td>%s</td><td class="n">%d</td><td>%s</td><td>%s</td><td>%s</td>'
                          .. '<td>%s</td><td>%s</td><td>%s</td></tr>',
                          html(os.date('!%Y-%m-%d %H:%M', tonumber(r.arrival) or 0)),
                          tonumber(r.incidents) or 1, html(failures.what_failed(r)),
                          html(r.header_from or ''),
                          r.dkim_domain and (html(r.dkim_domain) .. (r.dkim_selector and
                            (' s=' .. html(r.dkim_selector)) or '')) or '',
                          html(r.spf_dns or ''), html(r.delivery_result or ''),
                          html(r.reporter or r.reporting_mta or '')))
      end
      add('</tbody></table>')
    end
  elseif #fr.sources > 0 then
    add('<table id="failure-sources"><thead><tr><th>source IP</th><th class="n">reports</th>'
        .. '<th class="n">messages</th><th>what failed</th><th>per day</th></tr></thead><tbody>')
    for _, f in ipairs(fr.sources) do
      local days = {}
      for i, d in ipairs(f.days) do
        if i > 7 then break end
        days[#days + 1] = html(day_label(d.day)) .. ': ' .. d.incidents
      end
      add(string.format('<tr data-ip="%s"><td>%s</td><td class="n">%d</td><td class="n">%d</td>'
                        .. '<td>%s</td><td>%s</td></tr>', html(f.ip),
                        string.format('<a href="/source?d=%s&amp;ip=%s%s#failures">%s</a>',
                                      url(dom), url(f.ip), q, html(f.ip)),
                        f.reports, f.incidents, values_cell(f.failed, 3),
                        table.concat(days, '<br>')))
    end
    add('</tbody></table>')
    if fr.source_count > #fr.sources then
      add('<p class="hint">' .. (fr.source_count - #fr.sources) .. ' more sources with failure '
          .. 'reports; each is listed on its source page.</p>')
    end
  end
  add('</section>')
  return table.concat(out)
end

-- Which sources the table shows, and links to the other pages of it: every
-- source stays reachable however many there are.
local function sources_pager(s, dom, q)
  local size = M.limits.page_size
  if s.source_count <= #s.sources and s.source_offset == 0 then return '' end
  local n = math.floor(s.source_offset / size) + 1
  local pages = math.max(1, math.ceil(s.source_count / size))
  local function link(to, label)
    return string.format('<a href="/domain?d=%s%s&amp;page=%d#sources">%s</a>', url(dom), q, to,
                         label)
  end
  local out = { string.format('<p class="hint" id="sources-page">Sources %d to %d of %d '
                              .. '(page %d of %d).', s.source_offset + 1,
                              s.source_offset + #s.sources, s.source_count, n, pages) }
  if n > 1 then out[#out + 1] = ' ' .. link(1, 'first') .. ' ' .. link(n - 1, 'previous') end
  if n < pages then
    out[#out + 1] = ' ' .. link(n + 1, 'next') .. ' ' .. link(pages, 'last')
  end
  out[#out + 1] = '</p>'
  return table.concat(out)
end

-- The parts of a domain's page, each a string; `q` is the period part of
-- the links (HTML-escaped query).

local function domain_head(s, opts)
  local dom = s.domain
  return table.concat({
    '<h1>' .. html(dom) .. '</h1>',
    period_form('/domain', { d = dom }, s.days, opts.until_day),
    '<p class="hint">' .. html(day_label(s.first_day)) .. ' to ' .. html(day_label(s.last_day))
      .. ', ' .. s.days .. ' days; published policy p=' .. html(s.policy.p or 'unknown')
      .. (s.policy.reported_by and (' (latest report: ' .. html(s.policy.reported_by) .. ')') or '')
      .. '</p>',
    '<div class="cards">',
    card('total-messages', s.messages, 'messages'),
    card('pass-rate', pct(s.pass_rate), 'DMARC pass'),
    card('report-count', s.reports, 'reports'),
    card('reporter-count', #s.reporters, 'reporters'),
    card('unaligned-count', s.classes.unaligned, 'SPF/DKIM pass, not aligned'),
    card('spoof-count', s.classes.spoof, 'likely spoofing'),
    '</div>',
  })
end

local function readiness_section(s, q)
  local dom, r = s.domain, s.readiness
  local out = { '<section id="readiness"><h2>Readiness</h2>' }
  local function add(x) out[#out + 1] = x end
  add(string.format('<div class="verdict %s" id="verdict" data-verdict="%s">p=%s%s: %s</div>',
                    r.verdict, r.verdict, html(r.current), r.next and (' &rarr; ' .. r.next) or '',
                    html(summary.VERDICT_TEXT[r.verdict] or r.verdict)))
  add(string.format('<p id="at-risk" data-at-risk="%d" data-legitimate="%d">%d of %d '
                    .. 'legitimate-looking messages (%s) would be hit by p=%s; %d likely spoofed '
                    .. 'messages would be stopped.</p>', r.at_risk, r.legitimate, r.at_risk,
                    r.legitimate, pct(r.share), html(r.next or r.current), r.spoof_stopped))
  if r.testing then add('<p class="hint">The published policy is in testing (t=y or pct&lt;100).</p>') end
  if #r.fix_first > 0 then
    add('<h2>Fix first</h2><table id="fix-first"><thead><tr><th>source</th><th class="n">'
        .. 'messages at risk</th><th class="n">share</th><th>class</th><th>what to do</th></tr>'
        .. '</thead><tbody>')
    for _, f in ipairs(r.fix_first) do
      add(string.format('<tr><td>%s</td><td class="n">%d</td><td class="n">%s</td><td>%s</td>'
                        .. '<td>%s</td></tr>', source_link(dom, f.ip, q), f.at_risk, pct(f.share),
                        html(f.class), hints_html(f.hints, dom)))
    end
    add('</tbody></table>')
  end
  add('</section>')
  return table.concat(out)
end

local function charts_section(s)
  local out = {
    '<section><h2>Messages per day</h2>', M.volume_chart(s.daily),
    '<div class="legend"><span><i class="cls-pass"></i>DMARC pass</span>'
      .. '<span><i class="cls-spoof"></i>DMARC fail</span></div>',
    '<h2>DMARC pass rate</h2>', M.rate_chart(s.daily),
    '<h2>By class</h2>', M.class_chart(s.classes, s.messages), '<div class="legend">',
  }
  for _, c in ipairs(summary.CLASSES) do
    out[#out + 1] = string.format('<span><i class="cls-%s"></i>%s: <b data-class="%s">%d</b></span>',
                                  c, M.CLASS_LABEL[c], c, s.classes[c])
  end
  out[#out + 1] = '</div></section>'
  return table.concat(out)
end

local function sources_section(s, q)
  local dom = s.domain
  local out = { '<section><h2>Sources</h2><table id="sources"><thead><tr><th>source IP</th>'
                .. '<th class="n">messages</th><th class="n">DMARC pass</th><th>class</th>'
                .. '<th>header From</th><th>SPF</th><th>DKIM</th><th>reporters</th></tr></thead>'
                .. '<tbody>' }
  for _, src in ipairs(s.sources) do
    out[#out + 1] = string.format(
      '<tr data-ip="%s" data-messages="%d"><td>%s</td><td class="n">%d</td>'
        .. '<td class="n">%s</td><td><span class="tag">%s</span></td><td>%s</td>'
        .. '<td>%s</td><td>%s</td><td>%s</td></tr>', html(src.ip), src.messages,
      src.ip == 'other' and 'other'
        or (source_link(dom, src.ip, q) .. failure_link(s, dom, src.ip, q)),
      src.messages, pct(src.pass_rate), html(src.class), values_cell(src.header_from, 3),
      values_cell(src.spf, 3), values_cell(src.dkim, 3), values_cell(src.reporters, 3))
  end
  out[#out + 1] = '</tbody></table>'
  out[#out + 1] = sources_pager(s, dom, q)
  out[#out + 1] = '</section>'
  return table.concat(out)
end

-- Forwarding or likely spoofing: its messages and sources.
local function class_section(id, title, part, dom, q)
  local out = { string.format('<section><h2>%s: <span id="%s-messages">%d</span> messages</h2>',
                              title, id, part.messages) }
  if #part.sources > 0 then
    out[#out + 1] = '<table id="' .. id .. '"><thead><tr><th>source IP</th><th class="n">'
      .. 'messages</th><th>header From</th><th>reporters</th></tr></thead><tbody>'
    for _, f in ipairs(part.sources) do
      out[#out + 1] = string.format('<tr><td>%s</td><td class="n">%d</td><td>%s</td><td>%s</td>'
                                    .. '</tr>', source_link(dom, f.ip, q), f.messages,
                                    values_cell(f.header_from, 3), values_cell(f.reporters, 3))
    end
    out[#out + 1] = '</tbody></table>'
  end
  out[#out + 1] = '</section>'
  return table.concat(out)
end

-- Reporters, and what the totals hold beyond the itemised rows: messages
-- past the row cap, reports read despite a sender quirk.
local function reporters_section(s)
  local out = { '<section><h2>Reporters</h2><table id="reporters"><thead><tr><th>reporter</th>'
                .. '<th class="n">reports</th><th class="n">messages</th><th class="n">DMARC pass'
                .. '</th></tr></thead><tbody>' }
  local function add(x) out[#out + 1] = x end
  for _, rep in ipairs(s.reporters) do
    add(string.format('<tr><td>%s</td><td class="n">%d</td><td class="n">%d</td>'
                      .. '<td class="n">%s</td></tr>', html(rep.org_name), rep.reports,
                      rep.messages, pct(rep.pass_rate)))
  end
  add('</tbody></table>')
  if s.dropped_messages > 0 then
    add('<p class="hint" id="not-itemised">' .. s.dropped_messages .. ' messages were not itemised'
        .. ' by source (row limit per day); ' .. s.not_itemised.messages .. ' of them are counted in'
        .. ' every total above from their reports.</p>')
  end
  local warned = {}
  for code, n in pairs(s.report_warnings or {}) do warned[#warned + 1] = { code = code, n = n } end
  table.sort(warned, function(a, b) return a.code < b.code end)
  if #warned > 0 then
    local w = {}
    for i, x in ipairs(warned) do w[i] = html(x.code) .. ' ' .. x.n end
    add('<p class="hint" id="report-warnings">Reports stored with a warning (read despite a '
        .. 'sender quirk): ' .. table.concat(w, ', ') .. '.</p>')
  end
  add('</section>')
  return table.concat(out)
end

--- The dashboard of one policy domain.
-- @param s {table} summary.compute result
-- @param opts {table} days, until_day ('YYYY-MM-DD' or nil)
function M.render_domain(s, opts)
  opts = opts or {}
  local dom = s.domain
  local q = '&amp;days=' .. s.days .. (opts.until_day and ('&amp;until=' .. url(opts.until_day)) or '')
  local out = {
    domain_head(s, opts), readiness_section(s, q), charts_section(s), sources_section(s, q),
    class_section('forwarding', 'Forwarding (SPF fails, DKIM passes or breaks)', s.forwarding,
                  dom, q),
    class_section('spoofing', 'Likely spoofing', s.spoofing, dom, q),
  }
  if s.failure_reports and s.failure_reports.reports > 0 then
    out[#out + 1] = failures_section(s.failure_reports, dom, q, false)
  end
  out[#out + 1] = reporters_section(s)
  return page('DMARC: ' .. dom, table.concat(out))
end

-- One record of a source's drill-down; a DKIM result without a domain is
-- named as such ("no signature" when its result is none).
local function source_row(r)
  local dk, sp, rs = {}, {}, {}
  for _, x in ipairs(r.dkim_results) do
    if x.domain == '' and x.result == 'none' then
      dk[#dk + 1] = 'no signature'
    else
      dk[#dk + 1] = (x.domain ~= '' and html(x.domain) or '(no domain)')
        .. (x.selector ~= '' and (' s=' .. html(x.selector)) or '') .. ': ' .. html(x.result)
    end
  end
  for _, x in ipairs(r.spf_results) do
    sp[#sp + 1] = html(x.domain) .. ' (' .. html(x.scope) .. '): ' .. html(x.result)
  end
  for _, x in ipairs(r.reasons) do
    rs[#rs + 1] = html(x.type) .. (x.comment and (': ' .. html(x.comment)) or '')
  end
  return string.format('<tr data-count="%d"><td>%s</td><td class="n">%d</td><td>%s</td><td>%s</td>'
                       .. '<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>'
                       .. '<td>%s</td><td>%s</td><td>%s</td></tr>', r.count,
                       html(day_label(r.day)), r.count, html(r.class), html(r.header_from),
                       html(r.envelope_from), html(r.envelope_to or ''), html(r.disposition),
                       html(r.dkim), html(r.spf), table.concat(dk, '<br>'),
                       table.concat(sp, '<br>'), table.concat(rs, '<br>'), html(r.org_name))
end

--- The drill-down of one source of a domain.
function M.render_source(s, opts)
  opts = opts or {}
  local d = s.drill
  local dom = s.domain
  local out = {}
  local function add(x) out[#out + 1] = x end
  local q = '&amp;days=' .. s.days .. (opts.until_day and ('&amp;until=' .. url(opts.until_day)) or '')
  add('<p><a href="/domain?d=' .. url(dom) .. q .. '">&larr; ' .. html(dom) .. '</a></p>')
  add('<h1>Source <span id="source-ip">' .. html(d.ip) .. '</span> for ' .. html(dom) .. '</h1>')
  local src = d.source
  local fr = s.failure_reports
  if not src then
    add('<section><p id="no-data">No records of this source in the period.</p></section>')
    if fr and fr.rows and #fr.rows > 0 then add(failures_section(fr, dom, q, true)) end
    return page('DMARC: ' .. d.ip, table.concat(out))
  end
  add('<div class="cards">')
  add(card('source-messages', src.messages, 'messages'))
  add(card('source-pass-rate', pct(src.pass_rate), 'DMARC pass'))
  add(card('source-class', html(src.class), 'class'))
  add('</div>')
  if #src.hints > 0 then add('<section><h2>What to do</h2>' .. hints_html(src.hints, dom) .. '</section>') end
  local daily = {}
  for i, x in ipairs(d.daily) do daily[i] = { day = x.day, messages = x.messages, dmarc_pass = 0 } end
  for _, r in ipairs(d.rows) do
    for _, x in ipairs(daily) do
      if x.day == r.day and (r.class == 'pass' or r.class == 'forwarded') then
        x.dmarc_pass = x.dmarc_pass + r.count
      end
    end
  end
  add('<section><h2>Messages per day</h2>' .. M.volume_chart(daily) .. '</section>')
  add('<section><h2>Records</h2><table id="source-rows"><thead><tr><th>day</th>'
      .. '<th class="n">messages</th><th>class</th><th>header From</th><th>envelope From</th>'
      .. '<th>envelope To</th><th>disposition</th><th>DKIM aligned</th><th>SPF aligned</th>'
      .. '<th>DKIM results</th><th>SPF results</th><th>reasons</th><th>reporter</th></tr></thead>'
      .. '<tbody>')
  for _, r in ipairs(d.rows) do add(source_row(r)) end
  add('</tbody></table></section>')
  if fr and fr.rows and #fr.rows > 0 then add(failures_section(fr, dom, q, true)) end
  return page('DMARC: ' .. d.ip .. ' for ' .. dom, table.concat(out))
end

local function error_page(status, message)
  return page('Error', '<h1>' .. status .. '</h1><p>' .. html(message) .. '</p>')
end

-- ---------------------------------------------------------------------------
-- Routing

-- A query component: '+' is a space (HTML form encoding), then %XX.
local function percent_decode(s)
  return text.percent_decode((s:gsub('+', ' ')))
end

--- A request target split into path and query parameters (first value of
-- each name wins; at most max_params).
function M.parse_target(target)
  local path, query = target:match('^([^?#]*)%??([^#]*)')
  local params = {}
  local n = 0
  for pair in (query or ''):gmatch('[^&;]+') do
    n = n + 1
    if n > M.limits.max_params then break end
    local k, v = pair:match('^([^=]*)=?(.*)$')
    k = percent_decode(k)
    if params[k] == nil then params[k] = percent_decode(v) end
  end
  return percent_decode(path or '/'), params
end

local function response(status, ctype, body, extra)
  return { status = status, type = ctype, body = body, headers = extra }
end

-- The period parameters of a page: days (1..max) and until (YYYY-MM-DD).
local function period(params, ctx)
  local days = tonumber(params.days or ctx.days or M.defaults.days)
  if not days or days < 1 or days > M.limits.max_days or days % 1 ~= 0 then
    return nil, 'days must be 1..' .. M.limits.max_days
  end
  local until_day = params['until'] or ctx.until_day
  if until_day == '' then until_day = nil end
  local until_time = ctx.now and ctx.now() or os.time()
  if until_day then
    local y, m, d = until_day:match('^(%d%d%d%d)%-(%d%d)%-(%d%d)$')
    until_time = y and keys.day_start(y .. m .. d)
    if not until_time then return nil, 'until must be YYYY-MM-DD' end
  end
  return days, until_time, until_day
end

--- Answer one request.
-- @param req {table} method, target
-- @param ctx {table} source: {domains = function() → list, truncated;
--   load = function(domain, days, until_time) → data or nil, err}; days,
--   until_day (defaults for pages)
-- @return {status, type, body, headers}
function M.handle(req, ctx)
  if req.method ~= 'GET' and req.method ~= 'HEAD' then
    return response(405, 'text/html; charset=utf-8', error_page(405, 'method not allowed'),
                    { Allow = 'GET, HEAD' })
  end
  local path, params = M.parse_target(req.target)
  if path == '/static/dashboard.css' then
    return response(200, 'text/css; charset=utf-8', M.CSS)
  end
  if path == '/favicon.ico' then
    return response(204, 'image/x-icon', '') -- browsers ask; there is none
  end
  if path == '/' then
    local list, truncated = ctx.source.domains()
    if not list then return response(503, 'text/html; charset=utf-8', error_page(503, truncated)) end
    return response(200, 'text/html; charset=utf-8', M.render_index(list, { truncated = truncated }))
  end
  if path == '/domain' or path == '/source' or path == '/api/summary' then
    local dom = (params.d or ''):lower()
    if not keys.valid_domain(dom) then
      return response(400, 'text/html; charset=utf-8', error_page(400, 'invalid domain'))
    end
    local days, until_time, until_day = period(params, ctx)
    if not days then return response(400, 'text/html; charset=utf-8', error_page(400, until_time)) end
    local ip
    if path == '/source' then
      ip = (params.ip or ''):lower()
      if not keys.valid_ip(ip) then
        return response(400, 'text/html; charset=utf-8', error_page(400, 'invalid source IP'))
      end
    end
    local page_no = tonumber(params.page or '1')
    if not page_no or page_no < 1 or page_no > M.limits.max_page or page_no % 1 ~= 0 then
      return response(400, 'text/html; charset=utf-8', error_page(400, 'invalid page'))
    end
    local data, err = ctx.source.load(dom, days, until_time)
    if not data then return response(503, 'text/html; charset=utf-8', error_page(503, err)) end
    local s = summary.compute(data, { source = ip, top = M.limits.page_size,
                                      offset = (page_no - 1) * M.limits.page_size })
    if path == '/api/summary' then
      return response(200, 'application/json', summary.json(s) .. '\n')
    elseif path == '/source' then
      return response(200, 'text/html; charset=utf-8', M.render_source(s, { until_day = until_day }))
    end
    return response(200, 'text/html; charset=utf-8', M.render_domain(s, { until_day = until_day }))
  end
  return response(404, 'text/html; charset=utf-8', error_page(404, 'not found'))
end

-- ---------------------------------------------------------------------------
-- Data from Redis

-- Adds the domains of the stored aggregate reports to @by (domain -> entry): days stored,
-- last day.
local function add_report_domains(c, prefix, by)
  local ingest = require 'dmarc.owner.ingest'
  local cluster = require 'dmarc.redis.cluster'
  local found, serr = cluster.scan(c, ingest.scan_pattern(prefix))
  if not found then return nil, 'Redis: ' .. tostring(serr) end
  for _, k in ipairs(found) do
    local d, day = ingest.parse_key(prefix, k)
    if d then
      local e = by[d]
      if not e then
        e = { domain = d, days = 0, last_day = day }
        by[d] = e
      end
      e.days = e.days + 1
      if day > e.last_day then e.last_day = day end
    end
  end
  return true
end

-- A domain with failure reports and no aggregate report is listed too.
local function add_failure_domains(c, prefix, by)
  local cluster = require 'dmarc.redis.cluster'
  local failed, ferr = cluster.scan(c, keys.failure_scan_pattern(prefix))
  if not failed then return nil, 'Redis: ' .. tostring(ferr) end
  for _, k in ipairs(failed) do
    local d, day = keys.parse_failure_key(prefix, k)
    if d then
      local e = by[d] or { domain = d, days = 0, last_day = day }
      by[d] = e
      if day > e.last_day then e.last_day = day end
    end
  end
  return true
end

-- The entries of @by by domain name, at most M.limits.max_domains.
-- @return the list, and whether it was cut
local function domain_list(by)
  local list = {}
  for _, e in pairs(by) do list[#list + 1] = e end
  table.sort(list, function(a, b) return a.domain < b.domain end)
  local truncated = false
  if #list > M.limits.max_domains then
    for i = #list, M.limits.max_domains + 1, -1 do list[i] = nil end
    truncated = true
  end
  return list, truncated
end

--- The data source of the pages: SCAN for the index, summary.load for a
-- domain. One connection, reopened after an I/O failure.
function M.redis_source(opts)
  local conn
  local function get()
    if conn and not (conn.is_broken and conn:is_broken()) then return conn end
    if conn and conn.close then pcall(conn.close, conn) end
    local c, err = opts.connect()
    conn = c
    return c, err
  end
  local src = {}
  function src.domains()
    local c, err = get()
    if not c then return nil, 'Redis: ' .. tostring(err) end
    local by = {}
    local ok, serr = add_report_domains(c, opts.prefix, by)
    if not ok then return nil, serr end
    ok, serr = add_failure_domains(c, opts.prefix, by)
    if not ok then return nil, serr end
    return domain_list(by)
  end
  function src.load(dom, days, until_time)
    local c, err = get()
    if not c then return nil, 'Redis: ' .. tostring(err) end
    local data, lerr = summary.load(c, { domain = dom, days = days, ['until'] = until_time,
                                         prefix = opts.prefix })
    if not data then return nil, 'Redis: ' .. tostring(lerr) end
    return data
  end
  function src.close()
    if conn and conn.close then pcall(conn.close, conn) end
    conn = nil
  end
  return src
end

-- ---------------------------------------------------------------------------
-- HTTP server

local REASONS = { [200] = 'OK', [204] = 'No Content', [400] = 'Bad Request', [403] = 'Forbidden',
                  [404] = 'Not Found',
                  [405] = 'Method Not Allowed', [408] = 'Request Timeout',
                  [431] = 'Request Header Fields Too Large', [500] = 'Internal Server Error',
                  [503] = 'Service Unavailable' }

--- The bytes of a response (HEAD: headers only).
function M.encode_response(res, head_only)
  local lines = {
    string.format('HTTP/1.1 %d %s', res.status, REASONS[res.status] or 'Status'),
    'Content-Type: ' .. res.type,
    'Content-Length: ' .. #res.body,
    'Connection: close',
    'Cache-Control: no-store',
    'X-Content-Type-Options: nosniff',
    'Referrer-Policy: no-referrer',
    'X-Frame-Options: DENY',
    'Content-Security-Policy: ' .. M.CSP,
  }
  for k, v in pairs(res.headers or {}) do lines[#lines + 1] = k .. ': ' .. v end
  return table.concat(lines, '\r\n') .. '\r\n\r\n' .. (head_only and '' or res.body)
end

--- Parse a request head (request line and header fields).
-- @return {method, target, headers}, or nil, status
function M.parse_request(head)
  local line, rest = head:match('^([^\r\n]*)\r?\n(.*)$')
  if not line then return nil, 400 end
  local method, target, version = line:match('^(%u+) (%S+) HTTP/(%d%.%d)$')
  if not method or #target > M.limits.max_target then return nil, 400 end
  local headers = {}
  local n = 0
  for hl in rest:gmatch('([^\r\n]+)') do
    n = n + 1
    if n > M.limits.max_headers then return nil, 431 end
    -- Value trimmed by anchored greedy matches: linear in the line, whatever its blanks.
    local k, v = hl:match('^([%w%-]+):%s*(.*)$')
    if not k then return nil, 400 end
    v = v:match('^.*%S') or ''
    headers[k:lower()] = v
  end
  if target:sub(1, 1) ~= '/' then return nil, 400 end
  return { method = method, target = target, version = version, headers = headers }
end

-- Read a request head, bounded in size and time.
local function read_head(client, socket)
  local buf = ''
  local deadline = socket.gettime() + M.limits.request_timeout
  client:settimeout(0)
  while true do
    local e = buf:find('\r?\n\r?\n')
    if e then return buf:sub(1, e - 1) end
    if #buf > M.limits.max_request then return nil, 431 end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, 408 end
    socket.select({ client }, nil, math.min(left, 0.5))
    local data, err, partial = client:receive(M.limits.max_request + 1 - #buf)
    data = data or partial
    if data and #data > 0 then buf = buf .. data end
    if err == 'closed' then
      if buf:find('\r?\n\r?\n') then return buf end
      return nil, nil
    end
  end
end

local function is_loopback(h)
  return h == 'localhost' or h == '::1' or h:match('^127%.%d+%.%d+%.%d+$') ~= nil
end
M.is_loopback = is_loopback

--- Whether a Host header names this server: with a loopback listener only
-- loopback names and the right port are accepted, so a page on another site
-- cannot reach the dashboard through DNS rebinding.
function M.host_allowed(host_header, listen_host, port)
  if not is_loopback(listen_host) then return true end
  if not host_header then return false end
  local h, p = host_header:lower():match('^%[?([^%]]-)%]?:(%d+)$')
  if not h then h, p = host_header:lower(), '80' end
  return is_loopback(h) and tonumber(p) == port
end

local function serve_client(client, ctx, socket)
  local head, status = read_head(client, socket)
  local res, req
  if not head then
    if not status then return end
    res = response(status, 'text/html; charset=utf-8', error_page(status, 'bad request'))
  else
    req, status = M.parse_request(head)
    if not req then
      res = response(status, 'text/html; charset=utf-8', error_page(status, 'bad request'))
    elseif not M.host_allowed(req.headers.host, ctx.listen_host, ctx.port) then
      res = response(403, 'text/html; charset=utf-8', error_page(403, 'unexpected Host header'))
    else
      local ok, r = pcall(M.handle, req, ctx)
      if ok then
        res = r
      else
        if ctx.log then ctx.log('error', tostring(r)) end
        res = response(500, 'text/html; charset=utf-8', error_page(500, 'internal error'))
      end
    end
  end
  client:settimeout(M.limits.request_timeout)
  client:send(M.encode_response(res, req and req.method == 'HEAD'))
  if ctx.log then
    ctx.log('info', string.format('%s %s %d', req and req.method or '-',
                                  req and text.shown(req.target) or '-', res.status))
  end
end

--- Parse HOST:PORT / [IPv6]:PORT / PORT.
function M.parse_listen(s)
  s = tostring(s or M.defaults.listen)
  if s:match('^%d+$') then return '127.0.0.1', tonumber(s) end
  local host, port = s:match('^%[([^%]]+)%]:(%d+)$')
  if not host then host, port = s:match('^([^:]+):(%d+)$') end
  port = tonumber(port)
  if not host or not port or port > 65535 then return nil end
  return host, port
end

--- Run the server until max_requests have been served (forever without).
-- @param opts {table} listen ('127.0.0.1:8025'), source (redis_source),
--   days, until_day, max_requests, ready (function(host, port)), log
-- @return true, or nil, msg
function M.serve(opts)
  local socket = require 'socket'
  local host, port = M.parse_listen(opts.listen)
  if not host then return nil, 'bad listen address ' .. tostring(opts.listen) end
  local server, err = socket.bind(host, port)
  if not server then return nil, 'cannot listen on ' .. tostring(opts.listen) .. ': ' .. tostring(err) end
  local _, actual = server:getsockname()
  local ctx = { source = opts.source, days = opts.days, until_day = opts.until_day,
                listen_host = host, port = tonumber(actual) or port, log = opts.log }
  if opts.ready then opts.ready(host, ctx.port) end
  server:settimeout(0.5)
  local served = 0
  while not opts.max_requests or served < opts.max_requests do
    local client = server:accept()
    if client then
      served = served + 1
      local ok, e = pcall(serve_client, client, ctx, socket)
      if not ok and opts.log then opts.log('error', tostring(e)) end
      client:close()
    end
  end
  server:close()
  return true
end

return M
