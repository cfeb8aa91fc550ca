-- The soak's client: wrk drives /predict (JSON, one row) and posts an impression for every
-- answer (and a click for some) to /events in batches, with the token the answer carried.
--
-- Everything is counted when it is sent and when its answer comes back, so the run can be
-- compared with the server's counters exactly. A run has a budget of /predict requests:
-- once it is spent the client flushes the events still queued and then only asks /healthz,
-- so every counted request has been answered before wrk stops.
--
-- args: budget (0 = no budget), delay_ms (between a connection's requests), click_rate,
--       events_per_batch, seed

local rows = ROWS_PLACEHOLDER
local segments = SEGMENTS_PLACEHOLDER

local threads = {}
local json_headers = { ["Content-Type"] = "application/json" }

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local budget, delay_ms, click_rate, batch
local queue = {}
sent_predict, answered_predict, failed = 0, 0, 0
champion_answers, challenger_answers = 0, 0
impressions_champion, impressions_challenger = 0, 0
clicks_champion, clicks_challenger = 0, 0
event_requests, events_sent, events_accepted, events_rejected, events_duplicates = 0, 0, 0, 0, 0
healthz = 0
started, spent_s = 0, 0

function init(args)
  budget = tonumber(args[1])
  delay_ms = tonumber(args[2])
  click_rate = tonumber(args[3])
  batch = tonumber(args[4])
  math.randomseed(tonumber(args[5]) * 1000 + tid)
  started = os.time()
end

local function events_request()
  local parts = {}
  local n = math.min(#queue, 50)
  -- A click goes in the same post as its impression: /events counts a click only after its
  -- impression, and two posts in flight may be handled in either order.
  if n < #queue and queue[n + 1][2] == "click" then n = n + 1 end
  for i = 1, n do
    local e = table.remove(queue, 1)
    parts[i] = string.format('{"token":"%s","type":"%s","prediction":%s}', e[1], e[2], e[4])
    local challenger = e[3] == "challenger"
    if e[2] == "impression" then
      if challenger then impressions_challenger = impressions_challenger + 1
      else impressions_champion = impressions_champion + 1 end
    else
      if challenger then clicks_challenger = clicks_challenger + 1
      else clicks_champion = clicks_champion + 1 end
    end
  end
  event_requests = event_requests + 1
  events_sent = events_sent + n
  return wrk.format("POST", "/events", json_headers, '{"events":[' .. table.concat(parts, ",") .. "]}")
end

local verified = false

function request()
  -- wrk calls request() once on its first thread before any connection, to check the
  -- script (script_verify_request); that request is never sent, so it is not counted.
  if tid == 1 and not verified then
    verified = true
    return wrk.format("GET", "/healthz")
  end
  local spent = budget > 0 and sent_predict >= budget
  if #queue >= batch or (spent and #queue > 0) then
    return events_request()
  end
  if spent then
    healthz = healthz + 1
    return wrk.format("GET", "/healthz")
  end
  sent_predict = sent_predict + 1
  if sent_predict == budget then spent_s = os.time() - started end
  local body = string.format(
    '{"request_id":"soak-%d-%d","features":[%s],"segment":%s}',
    tid, sent_predict, rows[sent_predict % #rows + 1], segments[sent_predict % #segments + 1]
  )
  return wrk.format("POST", "/predict", json_headers, body)
end

function delay()
  if budget > 0 and sent_predict >= budget and #queue == 0 then
    return 20
  end
  return delay_ms
end

function response(status, headers, body)
  local token = body:match('"token":%s*"([^"]+)"')
  if token then
    if status ~= 200 then failed = failed + 1 return end
    answered_predict = answered_predict + 1
    local arm = body:match('"arm":%s*"(%a+)"')
    if arm == "challenger" then challenger_answers = challenger_answers + 1
    else champion_answers = champion_answers + 1 end
    local p = body:match('"predictions":%s*%[%s*([^,%]%s]+)')
    table.insert(queue, { token, "impression", arm, p })
    if math.random() < click_rate then
      table.insert(queue, { token, "click", arm, p })
    end
    return
  end
  local accepted = body:match('"accepted":%s*(%d+)')
  if accepted then
    events_accepted = events_accepted + tonumber(accepted)
    events_rejected = events_rejected + tonumber(body:match('"rejected":%s*(%d+)') or "0")
    events_duplicates = events_duplicates + tonumber(body:match('"duplicates":%s*(%d+)') or "0")
    return
  end
  if status ~= 200 then failed = failed + 1 end
end

local fields = {
  "sent_predict", "answered_predict", "failed", "champion_answers", "challenger_answers",
  "impressions_champion", "impressions_challenger", "clicks_champion", "clicks_challenger",
  "event_requests", "events_sent", "events_accepted", "events_rejected", "events_duplicates",
  "healthz", "spent_s",
}

function done(summary, latency, requests)
  local totals = {}
  for _, f in ipairs(fields) do totals[f] = 0 end
  for _, t in ipairs(threads) do
    for _, f in ipairs(fields) do totals[f] = totals[f] + (t:get(f) or 0) end
  end
  local out = {}
  for _, f in ipairs(fields) do out[#out + 1] = string.format('"%s":%d', f, totals[f]) end
  local e = summary.errors
  out[#out + 1] = string.format('"socket_errors":%d', e.connect + e.read + e.write + e.timeout)
  out[#out + 1] = string.format('"non_2xx":%d', e.status)
  out[#out + 1] = string.format('"requests":%d', summary.requests)
  out[#out + 1] = string.format('"duration_us":%d', summary.duration)
  out[#out + 1] = string.format('"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d',
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max)
  io.write("SOAK-RESULT {" .. table.concat(out, ",") .. "}\n")
end
