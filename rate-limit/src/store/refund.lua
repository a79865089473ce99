-- Gives back a charge: the units of one admitted request whose response the
-- layer does not charge (see the builder's `charge_if`), on the keys of its
-- client, in one atomic step. The transcription of rate-limit/src/window.rs's
-- `refunded` (keep the two in step; tests run both on the same sequences).
-- KEYS: the client's keys, one per policy (one hash tag). ARGV: now in µs
-- (-1: Redis' TIME), when the request was charged in µs (-1: now less the
-- elapsed time), the elapsed time in µs since it was sent, the units to give
-- back, then per policy algorithm (0 fixed, 1 sliding, 2 GCRA), limit,
-- window ms, and the reset ms its admission's row said.
-- Returns per policy 1 if it gave back, else 0.
-- Values are read in any form the other scripts write (a bare count, the
-- window's end in the key's expiry; "count:end"; "index:current:previous";
-- a TAT) and written back in the same form with the same expiry; a value
-- of another form is left alone. Counts never go below zero; a TAT moved
-- back to now is deleted (it holds nothing).
local floor, max, format, match = math.floor, math.max, string.format, string.match
local MAX = 9007199254740992
local TAT_FLOOR = 1125899906842624

local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function cdiv(a, b)
  local q = idiv(a, b)
  if q * b < a then
    q = q + 1
  end
  return q
end

local function int(v)
  local n = tonumber(v)
  if n and n >= 0 and n < MAX and n == floor(n) then
    return n
  end
  return nil
end

local now_us = tonumber(ARGV[1])
if now_us < 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local at_us = tonumber(ARGV[2])
if at_us < 0 then
  at_us = max(now_us - tonumber(ARGV[3]), 0)
end
local cost = tonumber(ARGV[4])
local now = idiv(now_us, 1000)

local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local base = 4 + 4 * (i - 1)
  local kind, L, W, reset = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    max(tonumber(ARGV[base + 3]), 1), tonumber(ARGV[base + 4])
  local end_ms = idiv(at_us, 1000) + reset
  out[i] = 0
  local value = redis.pcall('GET', key)
  if type(value) == 'string' then
    if kind == 0 then
      local x, y = match(value, '^(%d+):(%d+)$')
      local bare = false
      if x then
        x, y = int(x), int(y)
      else
        x, bare = int(value), true
        if x then
          y = redis.call('PEXPIRETIME', key)
        end
      end
      -- The window it was charged in: its end within half a window of
      -- `end_ms` (one key's windows end at least a window apart).
      if x and y and x > 0 and y > now and 2 * math.abs(y - end_ms) < W then
        -- A count above the limit is a full window (see single.lua's
        -- `full`): the refund frees a unit of it.
        if x > L and x < TAT_FLOOR then x = L end
        x = max(x - cost, 0)
        local v = format('%d', x)
        if not bare then v = format('%d:%d', x, y) end
        redis.call('SET', key, v, 'PXAT', format('%d', y))
        out[i] = 1
      end
    elseif kind == 1 then
      local x, y, z = match(value, '^(%d+):(%d+):(%d+)$')
      x, y, z = int(x), int(y), int(z)
      -- The aligned window whose end is nearest `end_ms`.
      local charged = idiv(end_ms + idiv(W, 2), W) - 1
      local changed = false
      -- Two windows on, its count weighs nothing any more.
      if x and y and z and charged >= 0 and charged + 1 >= idiv(now, W) then
        if x == charged and y > 0 then
          y, changed = max(y - cost, 0), true
        elseif x == charged + 1 and z > 0 then
          z, changed = max(z - cost, 0), true
        end
      end
      if changed then
        redis.call('SET', key, format('%d:%d:%d', x, y, z), 'PXAT', format('%d', max((x + 2) * W, 1)))
        out[i] = 1
      end
    else
      local x = int(value)
      if x and x > now_us then
        local interval = max(cdiv(W * 1000, L), 1)
        local tat = max(x - cost * interval, now_us)
        if tat <= now_us then
          redis.call('DEL', key)
        else
          redis.call('SET', key, format('%d', tat), 'PXAT', format('%d', max(cdiv(tat, 1000), 1)))
        end
        out[i] = 1
      end
    end
  end
end
return out
