module github.com/meatspace-exchange/mess

go 1.26.8
