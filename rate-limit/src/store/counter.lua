-- The fixed window of a layer with one policy, on Redis' clock: the
-- limiter's common case, at two commands per key (INCRBY, PTTL) in one
-- atomic step, no read of the time, no parsing. The value is a bare count
-- and the window's end is the key's expiry, as INCR + PEXPIRE writers (and
-- `Cache::incr_window`, and other languages) keep it.
-- KEYS: one per entry (a client's key; a key may come again, its entries
-- are counted in order). ARGV: the limit, the window in ms, then per entry
-- the total of its requests and the cost of each (n = total / cost requests
-- of that cost, one client's requests sent together).
-- Returns per entry {admitted requests m (its first m), the count after
-- them (at most the limit: a count above it is a full window), ms until the
-- window ends}; or {-1, 0, 0}, changing nothing that counts, when the key
-- holds no count of this policy (not an integer: an earlier version's
-- "count:end", another algorithm's state, another type; negative; above the
-- limit and at or above 2^50: a TAT): single.lua then reads it and replaces
-- it.
-- A count above the limit (below 2^50) is a full window, not foreign state
-- to replace: the pipelined counter (store/redis.rs, requests of cost 1)
-- leaves its rejected requests counted, and a higher limit's count is full
-- for the lower one too. Replacing it would start the window afresh: an
-- over-admission.
-- The totals go to INCRBY as the strings they came as (a Lua number would
-- be formatted again, with '%.17g'); the limiter keeps each under 2^53.
local floor, min = math.floor, math.min
local TAT_FLOOR = 1125899906842624
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local total, cost = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local count = redis.pcall('INCRBY', key, ARGV[2 * i + 1])
  local before
  if type(count) == 'number' then
    before = count - total
  end
  if not before or before < 0 or (before > limit and before >= TAT_FLOOR) then
    out[3 * i - 2], out[3 * i - 1], out[3 * i] = -1, 0, 0
  else
    local left = redis.call('PTTL', key)
    local fresh = left < 0
    -- No expiry (a new key, or one left without) or one past a window from
    -- now (a longer window's): the window ends one window from now.
    if fresh or left > window then
      left = window
    end
    local n = total / cost
    local m = n
    if count > limit then
      -- In order, each as if alone: the first m fit, the rest are rejected
      -- (all of one cost, so none after a rejected one fits).
      m = floor((limit - before) / cost)
      if m * cost > limit - before then m = m - 1 end
      if (m + 1) * cost <= limit - before then m = m + 1 end
      -- Already full (a count above the limit): none fits.
      if m < 0 then m = 0 end
      -- Rejected: charged nothing, in the same step, so no other request
      -- ever sees them counted; a key these requests made is removed.
      count = before + m * cost
      if count == 0 and fresh then
        redis.call('DEL', key)
      else
        redis.call('DECRBY', key, string.format('%d', total - m * cost))
        if left == window then
          redis.call('PEXPIRE', key, ARGV[2])
        end
      end
    elseif left == window then
      redis.call('PEXPIRE', key, ARGV[2])
    end
    out[3 * i - 2], out[3 * i - 1], out[3 * i] = m, min(count, limit), left
  end
end
return out
