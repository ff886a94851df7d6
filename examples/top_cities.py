# Which 5 cities have the highest sales? Run it in a sandbox:
#   cargo run -p codebox-cli -- run examples/top_cities.py --file examples/sales.csv
import pandas as pd

df = pd.read_csv("sales.csv", parse_dates=["date"])
top = df.groupby("city")["sales"].sum().nlargest(5).round(2)
print(f"{len(df)} sales rows, {df.city.nunique()} cities, {df.date.min():%b}–{df.date.max():%b %Y}")
print("Top 5 cities by sales:")
top
